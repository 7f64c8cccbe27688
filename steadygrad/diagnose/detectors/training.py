"""Detectors of the basic failure modes: loss spikes, gradient-norm spikes, NaN/Inf."""

from __future__ import annotations

import collections
import math
import statistics
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from steadygrad.core import Finding, FindingKind, Severity
from steadygrad.core.checks import finite_float, positive_int
from steadygrad.core.metrics import (
    AMP_SCALE,
    GRAD_NORM,
    GRAD_NORM_PRECLIP,
    LOSS,
    NONFINITE_GRADS,
    NONFINITE_PARAMS,
    OPTIMIZER_SKIPPED,
    PARAM_NORM,
)
from steadygrad.diagnose.detectors.base import Detector, RobustBaseline
from steadygrad.diagnose.detectors.stages import STAGE, WATCHING, StageWatch

if TYPE_CHECKING:
    from steadygrad.core import Record

LOSS_SPIKE = FindingKind("loss_spike", "the loss jumped far above its recent robust baseline")
GRAD_NORM_SPIKE = FindingKind(
    "grad_norm_spike", "the global gradient norm jumped far above its recent robust baseline"
)
NONFINITE = FindingKind(
    "nonfinite", "NaN/Inf in the loss, the gradients or the weights", Severity.CRITICAL
)
NONFINITE_ORIGIN = FindingKind(
    "nonfinite_origin",
    "the forward guard found the module that produced a NaN/Inf",
    Severity.CRITICAL,
)
AMP_OVERFLOW = FindingKind(
    "amp_overflow", "the GradScaler skipped a step whose gradients overflowed", Severity.INFO
)


class SpikeDetector(Detector):
    """Flags a value far above its recent robust baseline (median/MAD of the last ``window``).

    One Finding per episode: after a spike the detector stays quiet until ``cooldown`` recorded
    steps in a row look normal again. Non-finite values are left to :class:`NonFiniteDetector`.
    """

    per_task = True
    signal = LOSS.name

    def __init__(
        self,
        threshold: float = 6.0,
        window: int = 64,
        warmup: int = 20,
        rel_floor: float = 0.02,
        min_ratio: float = 1.0,
        cooldown: int = 10,
    ) -> None:
        self.threshold = finite_float("threshold", threshold, low=0.0, low_open=True)
        self.warmup = positive_int("warmup", warmup)
        self.rel_floor = finite_float("rel_floor", rel_floor, low=0.0)
        self.min_ratio = finite_float("min_ratio", min_ratio, low=0.0)
        self.cooldown = positive_int("cooldown", cooldown)
        self.baseline = RobustBaseline(positive_int("window", window))
        self._quiet_needed = 0

    def transform(self, value: float) -> float:
        return value

    def update(self, record: Record) -> list[Finding]:
        value = record.values.get(self.signal)
        if value is None or not math.isfinite(value) or record.meta.get("skipped"):
            return []
        x = self.transform(value)
        findings = []
        spiking = False
        if len(self.baseline) >= self.warmup and math.isfinite(x):
            median = self.baseline.median()
            z = self.baseline.score(x, self.rel_floor)
            base = self.untransform(median)
            # a ratio to a baseline below zero (a likelihood's negative log: a Gaussian NLL, a
            # flow) says nothing: the z-score and the detector's own test judge alone
            ratio = value / base if base > 0 else (math.inf if base == 0 else None)
            # the cheap ratio first: the per-loss look runs only on a norm well above its median
            spiking = (
                (ratio is None or ratio >= self.min_ratio)
                and (z > self.threshold or self.stands_out(record, value))
                and self.material(value, base)
            )
            if spiking and self._quiet_needed == 0:
                evidence = {self.signal: value, "baseline": base, "z": z}
                if ratio is not None:
                    evidence["ratio"] = ratio
                findings.append(Finding(self.kind, record.step, None, evidence, "warning"))
        if spiking:
            self._quiet_needed = self.cooldown
        elif self._quiet_needed:
            self._quiet_needed -= 1
        if math.isfinite(x):
            self.baseline.add(x)
        return findings

    def untransform(self, x: float) -> float:
        return x

    def material(self, value: float, median: float) -> bool:
        """Whether a value many z-scores out also matters (a subclass's test; here: always)."""
        return True

    def stands_out(self, record: Record, value: float) -> bool:
        """Whether a value not many z-scores out stands out by another test (a subclass's;
        here: none)."""
        return False


RECURS_EVERY = "recurs_every"  # evidence: the spacing of a recurring spike's batches
# A loss spike whose kind of batch recurs: at this many other multiples of one spacing the loss
# stood out of its neighbours alike, for one record each.
RECURRED = 2
# Spacings below this many records are the loss's own noise, not a stream's rhythm.
SHORTEST_PERIOD = 5


def recurring_period(values: np.ndarray, i: int, ratio: float) -> int | None:
    """The spacing, in records, at which the loss ``values`` stood out around record ``i`` (a
    spike ``ratio`` times its baseline) as it did there: at the multiples next to it (before
    and after, those in ``values``) and at ``RECURRED`` or more of those up to two away, it
    rose above the three records before it and the one after by the square root of ``ratio``
    or more. A data stream that mixes in a harder kind of batch at a fixed rate (a storm week,
    a code shard) makes the loss jump at every one of them and the run absorbs each; a bad
    batch or an unstable step comes once. Live, ``values`` ends at ``i``: only the multiples
    before it are read. None when no spacing fits.

    Example:
        >>> loss = np.ones(100); loss[[20, 45, 70]] = 8.0
        >>> recurring_period(loss[:71], 70, ratio=8.0)
        25
    """
    if not 1 < ratio < math.inf:
        return None  # a spike off a zero baseline has no bar to stand out by
    bar = math.sqrt(ratio)

    def stood_out(j: int) -> bool:
        before, after = values[j - 3 : j], values[j + 1 : j + 2]
        return (
            j >= 3
            and len(after) == 1
            and bool(np.isfinite(values[j - 3 : j + 2]).all())
            and values[j] >= bar * max(before.max(), after[0])
        )

    for period in range(SHORTEST_PERIOD, len(values) // RECURRED + 1):
        near = {k: j for k in (-2, -1, 1, 2) if 0 <= (j := i + k * period) < len(values) - 1}
        out = {k for k, j in near.items() if stood_out(j)}
        if len(out) >= RECURRED and all(k in out for k in (-1, 1) if k in near):
            return period
    return None


# The losses kept for the live rhythm test: spacings up to half of it.
RHYTHM_RECORDS = 512

# A loss this many times its recent median, far above the window's worst batches, that left
# the next loss above every one of the KNOCK_BAND before it (and below itself) knocked the run:
# a spike, however small against all the progress made since the first loss.
KNOCK_RATIO = 4.0
KNOCK_BAND = 20
# Tails above the median the next loss must stand after a jump within the tail's reach.
KNOCK_TAILS = 2.0
# A gradient norm within this many times its median over the last ORDINARY_OVER records made an
# ordinary update: the step's loss, however high, did not reach the weights through it.
ORDINARY_GRADIENT, ORDINARY_OVER = 2.0, 20
HARD_BATCH = "hard_batch"  # evidence: a loss spike the update did not feel, the next loss back
NEW_STAGE = "new_stage"  # evidence: a loss spike that was a step up to a level the loss then held


class LossSpikeDetector(SpikeDetector):
    """A loss far above its recent median (robust z-score over the last 64 recorded steps),
    by at least ``min_excess`` times the loss's scale: half the progress made since the first
    loss (a classifier trained to a loss of 0.05 sees batches of 0.4 that are many z-scores out
    and of no consequence; a language model trained from 7.3 to 5.0 nats that jumps to 8.8 on
    one batch lost more than all it had learnt), or a quarter of its level where it made little
    progress; and by at least ``tail_factor`` times how far the window's 95th percentile sits
    above its median. The MAD sees only the bulk; near zero loss a
    batch's loss is heavy-tailed (one hard example moves it 5-10x), and a spike worth naming
    stands far above the worst batches the run has been seeing, not just above the typical one.

    A fresh model's first losses can stand far above the level it finds within a few steps (an
    untrained regressor: 30, then 0.5 three steps on). The tail leaves out the first ``warmup``
    losses once 20 later ones fill the window, and a jump ``KNOCK_RATIO`` times the median that
    is short of half that progress, or of ``tail_factor`` times the tail (a loss still falling
    through the window reads its descent as spread), but above the tail itself, is still a
    spike when it knocked the run: the next loss
    stood above all of the ``KNOCK_BAND`` before it, and below the jump (found one record late,
    at its step). A hard batch near zero loss leaves the next one where it was; a loss that
    went on rising is a climb's first step.

    Example:
        >>> detector = LossSpikeDetector()
        >>> # Monitor(model, optimizer, detectors=[detector, ...])
    """

    kind = LOSS_SPIKE
    reads, emits = (LOSS, GRAD_NORM, GRAD_NORM_PRECLIP, PARAM_NORM), (LOSS_SPIKE,)
    signal = LOSS.name

    def __init__(self, *args, min_excess: float = 0.75, tail_factor: float = 4.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.min_excess = finite_float("min_excess", min_excess, low=0.0)
        self.tail_factor = finite_float("tail_factor", tail_factor, low=0.0)
        self._start = math.nan
        self._floor = math.inf
        self._added = 0  # values the baseline has taken in
        self._knock: dict[str, float] | None = None  # the evidence of a jump judged just now
        self._pending: Finding | None = None  # a jump waiting for the next loss
        self._hard: tuple[Finding, float] | None = None  # a spike the update did not feel
        self._losses: collections.deque[float] = collections.deque(maxlen=RHYTHM_RECORDS)
        self._grads: collections.deque[float] = collections.deque(maxlen=ORDINARY_OVER)
        self._stages = StageWatch()
        self._staged: Finding | None = None  # a step up, judged by the losses that follow it
        self._staged_now = False  # the step up was this loss: the next one says if it came back

    def update(self, record: Record) -> list[Finding]:
        value = record.values.get(self.signal)
        # what the baseline takes in (SpikeDetector.update): finite losses of steps not skipped
        taken = value is not None and math.isfinite(value) and not record.meta.get("skipped")
        if value is None:
            return super().update(record)
        stage = None
        if not record.meta.get("skipped"):
            stage = self._stages.add_record(record, value)
        findings = self._staged_if_stepped_up(self._judge_pending(value), stage)
        findings += self._staged_if_stepped_up(self._judge_hard(value), stage)
        findings += self._judge_staged(value, stage)
        self._losses.append(value)
        if taken:
            if math.isnan(self._start):
                self._start = value  # the loss before any update: where progress is counted from
            if len(self.baseline) >= 3:
                self._floor = min(self._floor, self.baseline.median())
        self._knock = None
        grad = record.values.get(GRAD_NORM_PRECLIP.name, record.values.get(GRAD_NORM.name))
        spikes = [self._recurring(f) for f in super().update(record)]
        spikes = [f for f in spikes if not self._held_as_hard(f, grad)]
        spikes = self._staged_if_stepped_up(spikes, stage)
        if grad is not None and math.isfinite(grad):
            self._grads.append(grad)
        if self._knock is not None and not spikes and not self._quiet_needed:
            evidence = {self.signal: value, **self._knock}
            self._pending = self._recurring(
                Finding(self.kind, record.step, None, evidence, "warning")
            )
        self._added += taken
        return findings + spikes

    def _staged_if_stepped_up(self, spikes: list[Finding], stage: str | None) -> list[Finding]:
        """``spikes`` less the warning found at the loss's step up to several times its level
        (see :class:`StageWatch`), which waits for the losses after it: a bad batch's loss
        comes back, a blow-up climbs on; a new stage of the data (a curriculum's next stage,
        hard negatives switched on, a new task's loss joining the sum) holds its new level or
        falls from it, and is no spike."""
        if stage != WATCHING or self._staged is not None:
            return spikes
        jumped = self._stages.stage[0][0]
        for spike in spikes:
            if spike.severity == "warning" and spike.step == jumped:
                self._staged, self._staged_now = spike, spike.step == self._stages.stage[-1][0]
                return [f for f in spikes if f is not spike]
        return spikes

    def _judge_staged(self, value: float, stage: str | None) -> list[Finding]:
        """The step up held by :meth:`_staged_if_stepped_up`, as this loss has it: a warning
        when the loss just after it came back more than halfway to the baseline (one batch),
        came back within the watch (``BACK``: a knock the run got over) or climbed on
        (``CLIMB``); info, with ``NEW_STAGE``, when it held its new level or fell from it
        without coming back (``STAGE``); nothing yet while watched."""
        spike, just_after = self._staged, self._staged_now
        if spike is None:
            return []
        self._staged_now = False
        halfway = (spike.evidence[self.signal] + spike.evidence["baseline"]) / 2
        one_batch = just_after and math.isfinite(value) and value < halfway
        if not one_batch and stage in (None, WATCHING):
            return []
        self._staged = None
        evidence = {**spike.evidence, "loss_after": value}
        if not one_batch and stage == STAGE:
            evidence[NEW_STAGE] = True
            return [replace(spike, evidence=evidence, severity="info")]
        self._quiet_needed = self.cooldown
        return [replace(spike, evidence=evidence)]

    def _recurring(self, spike: Finding) -> Finding:
        """``spike`` (found at the last loss taken in) at info when the loss stood out alike at
        the two multiples of one spacing before it (:func:`recurring_period`): a kind of batch
        the stream mixes in, absorbed each time before, is no instability to warn of."""
        ratio = spike.evidence.get("ratio")
        if ratio is not None:
            losses = np.fromiter(self._losses, dtype=float, count=len(self._losses))
            period = recurring_period(losses, len(losses) - 1, ratio)
            if period is not None:
                evidence = {**spike.evidence, RECURS_EVERY: period}
                return replace(spike, evidence=evidence, severity="info")
        return spike

    def _held_as_hard(self, spike: Finding, grad: float | None) -> bool:
        """Whether ``spike`` came with an ordinary gradient (:data:`ORDINARY_GRADIENT`),
        however far the loss stood out: then it waits for the next loss (with the band, the
        highest of the ``KNOCK_BAND`` losses before it), which says whether the run felt it at
        all. A robust loss (Huber, L1) caps the pull of an outlying target: heavy-tailed labels
        throw its loss 10x on one batch and leave the gradient where it was."""
        if spike.severity != "warning":
            return False
        if grad is None or not math.isfinite(grad) or len(self._grads) < self._grads.maxlen // 4:
            return False
        if not grad <= ORDINARY_GRADIENT * statistics.median(self._grads):
            return False
        before = list(self.baseline.values)[:-1]  # the spike, a finite loss, was taken in last
        self._hard = (spike, max(before[-KNOCK_BAND:], default=math.inf))
        return True

    def _judge_hard(self, value: float) -> list[Finding]:
        """The spike held by :meth:`_held_as_hard`, now that the next loss is in: info when
        that loss was back inside the band before the spike, or more than halfway back down
        to the spike's baseline (a batch far off, a noisy stream's
        or a bad one, whose pull a robust loss capped: the update was ordinary and left no
        trace; the batch is still named), a warning otherwise."""
        if self._hard is None:
            return []
        (spike, band), self._hard = self._hard, None
        evidence = {**spike.evidence, "loss_after": value}
        # back inside the band, or more than halfway down from the spike to its baseline: a
        # noisy stream's next batch may stand a little above the worst before it, but a climb
        # the spike began would hold the loss up
        halfway = (spike.evidence[self.signal] + spike.evidence["baseline"]) / 2
        if math.isfinite(value) and (value <= band or value < halfway):
            evidence[HARD_BATCH] = True
            return [replace(spike, evidence=evidence, severity="info")]
        return [replace(spike, evidence=evidence)]

    def _judge_pending(self, value: float) -> list[Finding]:
        """The jump waiting for this loss: a spike when this loss stands above the band before
        it (or is not finite) and below the jump (one batch's knock, not a climb's first
        step)."""
        pending, self._pending = self._pending, None
        if pending is None or value <= pending.evidence["knock_band"]:
            return []
        if value >= pending.evidence[self.signal]:
            return []  # the loss went on rising: a climb, judged as such
        pending.evidence["loss_after"] = value
        self._quiet_needed = self.cooldown
        return [pending]

    def material(self, value: float, median: float) -> bool:
        excess, tail = value - median, self._tail()
        if excess < tail:
            return False
        scale = max(0.5 * (self._start - self._floor), 0.25 * abs(median))
        if excess >= self.tail_factor * tail and excess >= self.min_excess * scale:
            return True
        if median > 0 and value >= KNOCK_RATIO * median:  # judged by the next loss
            band = max(list(self.baseline.values)[-KNOCK_BAND:])
            if excess < self.tail_factor * tail:
                # within the tail's reach (a loss still falling through the window reads its
                # descent as spread): the next loss must clear the tail twice over as well, a
                # level the run was knocked to, not a second hard batch
                band = max(band, median + KNOCK_TAILS * tail)
            self._knock = {
                "baseline": median,
                "z": self.baseline.score(value, self.rel_floor),
                "ratio": value / median,
                "knock_band": band,
            }
        return False

    def _tail(self) -> float:
        """How far the window's 95th percentile sits above its median (0 before 20 values),
        without the run's first ``warmup`` losses once 20 later ones are in the window."""
        values = list(self.baseline.values)
        early = max(0, self.warmup - (self._added - len(values)))
        if len(values) - early >= 20:
            values = values[early:]
        if len(values) < 20:
            return 0.0
        return max(statistics.quantiles(values, n=20)[-1] - statistics.median(values), 0.0)


def _clipped_like_any_step(evidence: dict) -> bool:
    """Whether a spike clipping hid was clipped to the norm its ordinary steps were clipped to
    as well (their median norm before clipping, ``baseline``, at or above the norm it was
    clipped to): clipping by norm sizes every such update alike, so the spike's update was no
    larger than any other's, only pointed as its batch pointed."""
    clipped, usual = evidence.get("clipped_to", math.nan), evidence.get("baseline", math.nan)
    return math.isfinite(clipped) and usual >= 0.99 * clipped


# The robust z-score of a gradient norm per unit of loss above which the norm is a spike
# though its own z-score is not: a second look at every record, so a higher bar than the norm's
# own (``threshold``) keeps the two together from warning healthy runs more often than one.
PER_LOSS_THRESHOLD = 8.0
PER_LOSS_Z = "per_loss_z"  # evidence: the z-score of a spike found per unit of loss
ABOVE_WINDOW = "above_window"  # evidence: a spike found as that many times its window's largest


def _per_loss(norm: float | None, loss: float | None) -> float:
    """``log(norm / loss)``; NaN where either is missing, not finite or not positive (a
    likelihood's negative log can be below zero)."""
    if norm is None or loss is None or not (0 < norm < math.inf and 0 < loss < math.inf):
        return math.nan
    return math.log(norm) - math.log(loss)


# The records whose gradient norms are the run's opening ones (see GradNormSpikeDetector).
OPENING = 10
# A gradient norm this many times the largest of its window stands out whatever the spread
# (kept as its log, as the window is).
ABOVE_ALL = math.log(5.0)


class GradNormSpikeDetector(SpikeDetector):
    """A global gradient norm far above its recent median, scored in log space (gradient norms
    are heavy-tailed) and required to be at least ``min_ratio`` times the median; short of the
    z-score, a norm far above its loss's or five times the largest in its window counts too
    (:meth:`stands_out`).

    When the run passes ``grad_norm_preclip`` (the norm before clipping), that is the norm
    watched, so a spike that clipping hid is still caught; the finding says it was clipped.

    A spike is judged by the loss it leaves: its finding comes with the next record and is a
    warning if the loss at the spike or just after it stood above the highest of the
    ``loss_band`` losses before; info if the loss did not feel it (healthy transformers have
    bursts of 10x and more that training shrugs off), or if clipping hid it in a run whose
    ordinary steps it clipped to the same norm (its update no larger than theirs), or if it was
    no larger than the median of the run's first ``OPENING`` norms (a fitted model meeting a
    hard batch: its gradient is large only against the small ones fitting left; the median, as
    a recurrence's first steps can burst). A spike on a
    run's last record is not reported.
    """

    kind = GRAD_NORM_SPIKE
    reads, emits = (GRAD_NORM, GRAD_NORM_PRECLIP, LOSS, PARAM_NORM), (GRAD_NORM_SPIKE,)
    signal = GRAD_NORM.name

    def update(self, record: Record) -> list[Finding]:
        loss = record.values.get(LOSS.name)
        stage = None
        if loss is not None and not record.meta.get("skipped"):
            stage = self._stages.add_record(record, loss)
        findings = self._judge_staged(stage) + self._judge_pending(record)
        if GRAD_NORM_PRECLIP.name in record.values:
            self.signal = GRAD_NORM_PRECLIP.name
        self._per_loss = _per_loss(record.values.get(self.signal), record.values.get(LOSS.name))
        if record.values.get(self.signal) == math.inf and not record.nonfinite:
            findings += self._overflowed(record)
        else:
            spikes = super().update(record)
            for f in spikes:  # its own z-score under the bar: say which test found it
                if f.evidence["z"] <= self.threshold and self._by_its_loss:
                    f.evidence[PER_LOSS_Z] = self._per_loss_baseline.score(self._per_loss)
                elif f.evidence["z"] <= self.threshold:
                    f.evidence[ABOVE_WINDOW] = self._above_window
            if spikes and self.signal == GRAD_NORM_PRECLIP.name:
                clipped = record.values.get(GRAD_NORM.name, math.nan)
                for f in spikes:
                    f.evidence["clipped_to"] = clipped
                    f.evidence["hidden_by_clipping"] = clipped < 0.5 * record.values[self.signal]
            if spikes:
                self._pending = (spikes[0], max(self._losses, default=math.inf))
        if math.isfinite(self._per_loss):
            self._per_loss_baseline.add(self._per_loss)
        norm = record.values.get(self.signal)
        if len(self._opening) < OPENING and norm is not None and math.isfinite(norm):
            self._opening.append(norm)
        if self._pending is not None and self._pending[0].step == record.step:
            findings += self._judge_pending(record)  # the loss at the spike already rose
        if loss is not None and math.isfinite(loss):
            self._losses.append(loss)
        return findings

    def _judge_pending(self, record: Record) -> list[Finding]:
        """The spike waiting for the loss: a warning once a loss after it leaves the band
        (or is not finite), info if the next record's loss stayed inside."""
        if self._pending is None:
            return []
        spike, band = self._pending
        loss = record.values.get(LOSS.name)
        if loss is None:
            self._pending = None
            return [spike]  # no loss to judge by: as found
        felt = not math.isfinite(loss) or loss > band
        if not felt and record.step == spike.step:
            return []  # wait for the loss after the update
        self._pending = None
        evidence = {**spike.evidence, "loss_after": loss, "loss_band": band}
        if spike.evidence.get("hidden_by_clipping") and _clipped_like_any_step(spike.evidence):
            # the usual norm was over the clip's too: every step's update had the spike's size
            evidence["clipped_like_any_step"] = True
            felt = False
        norm = spike.evidence.get(self.signal, math.inf)
        opening = statistics.median(self._opening) if len(self._opening) == OPENING else 0.0
        if norm <= opening:
            # no larger than the gradients the run began with and trained through: a spike
            # only against the small gradients of a model that has since fitted (a hard batch)
            evidence["opening_grad_norm"] = opening
            felt = False
        judged = replace(spike, evidence=evidence, severity="warning" if felt else "info")
        watch = self._stages
        if felt and watch.stage and watch.stage[0][0] == spike.step:
            # the loss stepped up with it: the harder batches a new stage of the data brings
            # (their loss and gradient both larger), or a bad batch, or a climb's first step
            self._staged = judged
            return []
        return [judged]

    def __init__(
        self,
        threshold: float = 6.0,
        min_ratio: float = 8.0,
        recent: int = 5,
        loss_band: int = 20,
        **kwargs,
    ) -> None:
        kwargs.setdefault("rel_floor", 0.0)
        super().__init__(threshold=threshold, min_ratio=min_ratio, **kwargs)
        self.recent = positive_int("recent", recent)
        self._losses: collections.deque[float] = collections.deque(
            maxlen=positive_int("loss_band", loss_band)
        )
        self._pending: tuple[Finding, float] | None = None
        self._opening: list[float] = []  # the norms of the run's first OPENING records
        # log(gradient norm / loss) of the records read, and of this one
        self._per_loss_baseline = RobustBaseline(self.baseline.values.maxlen or 64)
        self._per_loss = math.nan
        self._by_its_loss, self._above_window = False, math.nan  # how the last norm stood out
        self._stages = StageWatch()
        self._staged: Finding | None = None  # a spike the loss stepped up with, awaiting the stage

    def _judge_staged(self, stage: str | None) -> list[Finding]:
        """The spike the loss stepped up with, once the stage is judged: info, with
        ``NEW_STAGE``, when the loss held its new level or fell from it; as judged otherwise
        (it climbed on, or came back: a bad batch the update felt)."""
        spike = self._staged
        if spike is None or stage in (None, WATCHING):
            return []
        self._staged = None
        if stage == STAGE:
            return [replace(spike, evidence={**spike.evidence, NEW_STAGE: True}, severity="info")]
        return [spike]

    def stands_out(self, record: Record, value: float) -> bool:
        """A gradient far above its loss's (:meth:`beyond_its_loss`), or ``ABOVE_ALL`` times
        the largest of the last ``window`` records: in a run whose norms scatter 1.5x from step
        to step (small batches), a 35x jump is only 5 robust z-scores in log space, yet no step
        the window saw came within a fifth of it."""
        self._by_its_loss = self.beyond_its_loss(record, value)
        above = self.transform(value) - max(self.baseline.values, default=math.inf)
        self._above_window = math.exp(above)
        return self._by_its_loss or above >= ABOVE_ALL

    def beyond_its_loss(self, record: Record, value: float) -> bool:
        """A gradient far above its loss's (its log over the loss's at least
        ``PER_LOSS_THRESHOLD`` robust z-scores above the last ``window`` records', and
        ``min_ratio`` times the median of the last ``recent``): a norm the batch did not earn.
        A hard batch raises the loss with its gradient (a squared error's gradient grows as its
        square root, a cross-entropy's at most as fast as it), so its gradient per unit of loss
        does not rise; one a loss weight or a reduction typed wrong for one step multiplied,
        the loss recorded as usual, rises by all of that factor. Judged on the gradient per
        unit of loss, whose spread is the batches' spread in difficulty taken out, such a norm
        stands out in a run whose gradient norm alone is too heavy-tailed to tell it."""
        per_loss, past = self._per_loss, self._per_loss_baseline
        if not math.isfinite(per_loss) or len(past) < self.warmup:
            return False
        recent = statistics.median(list(past.values)[-self.recent :])
        material = per_loss - recent >= math.log(self.min_ratio)
        return material and past.score(per_loss) > PER_LOSS_THRESHOLD

    def _overflowed(self, record: Record) -> list[Finding]:
        """A norm past float32's range while every entry is finite: the largest spike there
        is (entries of 1e20 and more), once it has a baseline to stand above."""
        if len(self.baseline) < self.warmup or self._quiet_needed:
            self._quiet_needed = self.cooldown
            return []
        self._quiet_needed = self.cooldown
        baseline = self.untransform(self.baseline.median())
        evidence = {self.signal: math.inf, "baseline": baseline, "ratio": math.inf, "z": math.inf}
        return [Finding(self.kind, record.step, None, evidence, "warning")]

    def transform(self, value: float) -> float:
        return math.log(value) if value > 0 else -math.inf

    def material(self, value: float, median: float) -> bool:
        """A spike also stands ``min_ratio`` times above the median of the last ``recent``
        norms: a norm that climbed there over several steps (a model leaving a plateau, whose
        loss then falls) has moved its level, which the 64-step baseline has yet to follow."""
        recent = list(self.baseline.values)[-self.recent :]
        return value >= self.min_ratio * math.exp(statistics.median(recent))

    def untransform(self, x: float) -> float:
        return math.exp(x)


class NonFiniteDetector(Detector):
    """NaN/Inf in the loss, the gradients or the weights, with where it was born.

    A step that a mixed-precision GradScaler skipped (the optimizer did not step, the loss and
    the weights are finite) is reported as an ``amp_overflow`` (severity info), not as a
    divergence: one finding per run of consecutive skipped steps, at its first step.
    """

    kind = NONFINITE
    reads = (LOSS, NONFINITE_GRADS, NONFINITE_PARAMS, OPTIMIZER_SKIPPED, GRAD_NORM, AMP_SCALE)
    emits = (NONFINITE, NONFINITE_ORIGIN, AMP_OVERFLOW)

    def __init__(self) -> None:
        self._in_episode = False
        self._origin_known = False
        self._in_overflow = False

    def update(self, record: Record) -> list[Finding]:
        v = record.values
        loss = v.get(LOSS.name, 0.0)
        bad_grads = v.get(NONFINITE_GRADS.name, 0.0)
        bad_params = v.get(NONFINITE_PARAMS.name, 0.0)
        loss_bad = not math.isfinite(loss)
        if not (loss_bad or bad_grads or bad_params):
            self._in_episode = self._in_overflow = False
            return []
        meta = record.meta
        if (
            meta.get("skipped")
            and meta.get("skipped_by") is None
            and not loss_bad
            and not bad_params
        ):
            if self._in_overflow:  # the same overflow episode: said at its first step
                return []
            self._in_overflow = True
            evidence = {"nonfinite_grads": bad_grads, "grad_norm": v.get(GRAD_NORM.name)}
            if AMP_SCALE.name in v:
                evidence["amp_scale"] = v[AMP_SCALE.name]
            # the loss was finite: the tensor whose float16 gradient overflowed first
            overflowed = meta.get("backward_origin")
            if overflowed:
                evidence["backward_origin"] = overflowed
            where = overflowed.get("parameter") if overflowed else None
            return [Finding(AMP_OVERFLOW, record.step, where, evidence, "info")]
        forward = meta.get("forward_origin")
        backward = meta.get("backward_origin")
        if self._in_episode:
            if forward and not self._origin_known:
                # The forward guard armed by the first non-finite step found the producer.
                self._origin_known = True
                evidence = {"forward_origin": forward, "loss": loss}
                return [
                    Finding(NONFINITE_ORIGIN, record.step, forward["module"], evidence, "critical")
                ]
            return []
        self._in_episode = True
        self._origin_known = bool(forward)
        evidence: dict = {
            "loss": loss,
            "nonfinite_grads": bad_grads,
            "nonfinite_params": bad_params,
        }
        where = None
        if forward:
            evidence["forward_origin"] = forward
            where = forward.get("module")
        if backward:
            evidence["backward_origin"] = backward
            where = where or backward.get("parameter")
        if not forward and not backward:
            evidence["note"] = "origin unknown at this step; the forward guard is armed"
        return [Finding(self.kind, record.step, where, evidence, "critical")]


def default_detectors() -> list[Detector]:
    """The detectors a Monitor runs when none are given: those of the built-in signals, and
    those of the optional signals (each stays silent while its signal is not recorded)."""
    from steadygrad.diagnose.detectors import continual, curvature, distributed, transformer, trends

    return [
        LossSpikeDetector(),
        trends.LossDivergence(),
        trends.GradientGrowth(),
        trends.UnstableSteps(),
        GradNormSpikeDetector(),
        NonFiniteDetector(),
        transformer.GradientSpike(),
        transformer.UpdateRatioOutOfRange(),
        transformer.AttentionLogitGrowth(),
        transformer.OutputLogitDivergence(),
        transformer.SoftmaxCollapse(),
        transformer.PlasticityLoss(),
        curvature.SharpnessAboveLimit(),
        continual.StabilityGap(),
        distributed.RankSpikeDetector(),
    ]
