"""Detectors for the instabilities large-scale transformer training reports.

Each reads one family of per-module metrics from the Record stream, keeps O(1) state per module,
and raises one Finding per episode (it re-arms once the condition has cleared):

- :class:`AttentionLogitGrowth` (``attn_logit_max/*``): sustained growth of the largest
  attention logit towards the values where attention entropy collapses (Wortsman et al. 2023:
  loss degrades near 1e3, every run above ~1e4 diverged).
- :class:`OutputLogitDivergence` (``logit_lse_mean``): the log-partition drifts away from 0.
- :class:`SoftmaxCollapse` (``softmax_collapse``): many rows get exactly zero gradient.
- :class:`GradientSpike` (``grad_norm/*``): a tensor's gradient norm against its running second
  moment (the SPAM view), with the spike factor.
- :class:`PlasticityLoss` (``dead_units/*``, ``effective_rank/*``): dead units, collapsing rank.
- :class:`UpdateRatioOutOfRange` (``update_ratio/*``): ``||dw|| / ||w||`` too large or ~0.
"""

from __future__ import annotations

import collections
import math
import statistics

import numpy as np

from steadygrad.core import Finding, FindingKind, Record, Severity
from steadygrad.core.checks import finite_float, positive_int
from steadygrad.core.metrics import (
    ATTN_LOGIT_MAX,
    ATTN_SATURATED,
    DEAD_UNITS,
    EFFECTIVE_RANK,
    FROZEN_AT_ATTACH,
    GRAD_NORM,
    GRAD_NORM_PRECLIP,
    GRADIENTS_NOT_APPLIED,
    LEARNING_RATE,
    LOGIT_LSE_MEAN,
    LOSS,
    OPTIMIZER_FAMILY,
    OPTIMIZER_SKIPPED,
    OUTPUT_CLASSES,
    OUTPUT_EPSILON,
    OUTPUT_LOGIT_MAX,
    OUTPUT_LOGIT_MEAN,
    OUTPUT_LOGIT_RMS,
    OUTPUT_MODULE,
    OUTPUT_SCALE,
    OUTPUT_SHIFT_GRADIENT,
    OUTPUT_TARGETS_OUTSIDE,
    PARAM_NORM,
    RELU_ACTIVE,
    SATURATED,
    SOFTMAX_COLLAPSE,
    UNUSED_PARAMETERS,
    UPDATE_RATIO,
    ZEROED_UNITS,
)
from steadygrad.core.optimizer import GRADIENT_SCALED
from steadygrad.diagnose.detectors.base import (
    PREVIOUS_READING,
    STREAK_BEGAN,
    Cadence,
    Detector,
    Readings,
    shrunk_by_clipping,
)
from steadygrad.diagnose.detectors.trends import FoundAgain, SustainedLevel, loss_stalled

ATTENTION_LOGIT_GROWTH = FindingKind(
    "attention_logit_growth", "a layer's largest attention logit grows towards entropy collapse"
)
OUTPUT_LOGIT_DIVERGENCE = FindingKind(
    "output_logit_divergence", "the output log-partition drifts far from zero"
)
SOFTMAX_COLLAPSE_KIND = FindingKind(
    "softmax_collapse", "many rows' float32 softmax rounds the target to 1: zero gradient"
)
GRADIENT_SPIKE = FindingKind(
    "gradient_spike", "a tensor's gradient norm far above its running RMS (SPAM's test)"
)
LOSS_OF_PLASTICITY = FindingKind(
    "loss_of_plasticity", "a layer's units died or its feature rank collapsed"
)
UPDATE_RATIO_OUT_OF_RANGE = FindingKind(
    "update_ratio_out_of_range", "a tensor's update-to-weight ratio is too large, or ~0 (frozen)"
)


class _Streak:
    """Counts consecutive records where a condition holds; fires once per episode."""

    __slots__ = ("count", "fired")

    def __init__(self) -> None:
        self.count = 0
        self.fired = False

    def update(self, condition: bool, patience: int) -> bool:
        if not condition:
            self.count, self.fired = 0, False
            return False
        self.count += 1
        if self.count >= patience and not self.fired:
            self.fired = True
            return True
        return False


class AttentionLogitGrowth(Detector):
    """Fires when a layer's largest attention logit grows for ``patience`` records in a row, has
    at least ``growth`` times its smallest value so far, and is above ``threshold``; fires
    (critical) at once when it reaches ``critical`` or is not finite.

    ``threshold=100``: the level production trainers cap the logits at (Megatron's ``--qk-clip``
    and Kimi K2's MuonClip rescale q and k to a largest logit of 100); a healthy model can learn
    one-hot attention with logits of 50-60 and train on. ``critical=1e3``: where Wortsman et al.
    saw the loss degrade. "Grows" means above the series' running average (EMA, ``smoothing``)
    and above the reading before (after a jump the lagging average stays below a level).

    Early warning: growth that compounds, as when the q/k weights themselves grow by a factor
    each step (Wortsman et al.: the logits grow with the square of their scale). Over the last
    four readings on the signal's cadence the logit rose by at least ``EARLY_RATIO`` each time,
    at a per-step rate that is not slowing (each at least ``STEADY`` of the one before, and the
    last at least ``STEADY`` of the fastest: learning from a small initialisation slows as it
    goes, if not at every reading), it stands at ``EARLY_FROM`` of ``threshold`` or more (past
    the logits of a learnt alignment: a small language model's sharpest heads stop near 40-55
    as they learn, rising fast on the way; a Hugging Face model's q and k, initialised at 0.02,
    start its logits near 0.1 and grow them a hundredfold), and at that rate it crosses
    ``threshold`` within three more readings: a warning then.

    Saturated: at ``HELD`` readings on the cadence in a row (a whole cadence apart: a state,
    not one batch's), ``ONE_HOT`` or more of the layer's attention rows were one-hot
    (``attn_saturated``), and at least twice the share of
    its first reading (a collapse is a change), while its largest logit stood at ``ALIGNED``
    of ``threshold`` or more: attention entropy collapse (Zhai et al. 2023) from logits far
    beyond what a learnt alignment needs. A one-hot row over a few dozen keys needs a gap of
    about 10 (weight 0.99 against 40 keys: ``log(99 * 39)``, 8.3); the healthy layers of the
    kept collection's 180 controls with attention that held half their rows one-hot did so at
    largest logits of 7-18, the faults that did at 29-46 and beyond: three times what the
    alignment needs is past it.

    Example:
        >>> detector = AttentionLogitGrowth()
        >>> detector.update(Record(0, {"attn_logit_max/h.0.attn": 2.0}))
        []
    """

    kind = ATTENTION_LOGIT_GROWTH
    reads, emits = (ATTN_LOGIT_MAX, ATTN_SATURATED), (ATTENTION_LOGIT_GROWTH,)

    EARLY_RATIO = 1.3
    STEADY = 0.7
    EARLY_FROM = 0.5
    ONE_HOT = 0.5
    HELD = 2
    ALIGNED = 0.3

    def __init__(
        self,
        threshold: float = 100.0,
        critical: float = 1e3,
        growth: float = 2.0,
        patience: int = 3,
        smoothing: float = 0.5,
        signal: str = ATTN_LOGIT_MAX.name,
    ) -> None:
        self.threshold = finite_float("threshold", threshold, low=0.0, low_open=True)
        self.critical = finite_float("critical", critical, low=self.threshold)
        self.growth = finite_float("growth", growth, low=1.0)
        self.patience = positive_int("patience", patience)
        self.smoothing = finite_float("smoothing", smoothing, low=0.0, high=1.0, high_open=True)
        self.signal = signal
        self._state: dict[str, list[float]] = {}  # name -> [floor, ema, rising, last]
        self._readings = Readings()
        self._fired: dict[str, float] = {}  # name -> the value it fired at (re-armed below half)
        # name -> the last four readings on the cadence (step, value)
        self._cadenced: dict[str, collections.deque[tuple[int, float]]] = {}
        self._cadence = Cadence()
        self._one_hot: dict[str, _Streak] = {}  # name -> readings saturated at large logits
        self._first_share: dict[str, float] = {}  # name -> its first reading's one-hot share

    def update(self, record: Record) -> list[Finding]:
        if record.nonfinite:
            return []  # NaN-driven values are no evidence of this mechanism
        findings = []
        family = record.family(self.signal)
        on_cadence = False
        if family:
            self._readings.read(record.step)
            on_cadence = self._cadence.on(record.step)
        for name, value in family.items():
            state = self._state.get(name)
            if not math.isfinite(value) or value >= self.critical:
                if name not in self._fired:
                    self._fired[name] = math.inf
                    findings.append(self._finding(record.step, name, value, state, "critical"))
                continue
            early = self._compounding(name, record.step, value) if on_cadence else None
            if state is None:
                self._state[name] = [value, value, 0, value]
                continue
            floor, ema, rising, last = state
            # grows: above its running average and above the reading before (a jump followed by
            # a level stays above the lagging average for a while without growing)
            rising = rising + 1 if value > ema and value > last else 0
            floor = min(floor, value)
            state[:] = [floor, self.smoothing * ema + (1 - self.smoothing) * value, rising, value]
            if value < min(self._fired.get(name, math.inf), self.threshold) / 2:
                self._fired.pop(name, None)
            if name in self._fired:
                continue
            hit = value >= self.threshold and value >= self.growth * floor
            if (hit and rising >= self.patience) or early is not None:
                self._fired[name] = value
                finding = self._finding(record.step, name, value, state, "warning")
                if early is not None and not hit:
                    finding.evidence.update(early)
                findings.append(finding)
        if on_cadence:
            findings += self._saturated(record, family)
        return findings

    def _saturated(self, record: Record, logits: dict[str, float]) -> list[Finding]:
        """The saturation test (see the class docstring) on this reading's layers."""
        found = []
        for name, share in record.family(ATTN_SATURATED.name).items():
            logit = logits.get(name)
            # a collapse is a change: at least twice the one-hot rows of the layer's first
            # reading (Gemma's unscaled q.k over normalised q and k starts with half its rows
            # one-hot, and that is the architecture's attention)
            start = self._first_share.setdefault(name, share)
            held = (
                logit is not None
                and math.isfinite(share)
                and share >= max(self.ONE_HOT, 2 * start)
                and logit >= self.ALIGNED * self.threshold
            )
            streak = self._one_hot.setdefault(name, _Streak())
            if not streak.update(held, self.HELD) or name in self._fired:
                continue
            self._fired[name] = logit
            finding = self._finding(record.step, name, logit, self._state.get(name), "warning")
            finding.evidence[ATTN_SATURATED.name] = share
            finding.evidence[PREVIOUS_READING] = self._readings.before(streak.count)
            found.append(finding)
        return found

    def _compounding(self, name: str, step: int, value: float) -> dict[str, float] | None:
        """The early-warning test (see the class docstring) on this layer's cadenced readings;
        its evidence when it holds."""
        kept = self._cadenced.setdefault(name, collections.deque(maxlen=4))
        kept.append((step, value))
        if len(kept) < 4 or value < self.EARLY_FROM * self.threshold:
            return None
        rates, readings = [], list(kept)
        for (s0, v0), (s1, v1) in zip(readings, readings[1:], strict=False):
            if not (v0 > 0 and v1 >= self.EARLY_RATIO * v0 and s1 > s0):
                return None
            rates.append(math.log(v1 / v0) / (s1 - s0))
        if any(b < self.STEADY * a for a, b in zip(rates, rates[1:], strict=False)):
            return None  # slowing down at some reading: learning, not compounding
        if rates[-1] < self.STEADY * max(rates):
            return None  # slowed from its fastest over the readings: learning, not compounding
        last_gap = kept[-1][0] - kept[-2][0]
        to_threshold = math.log(self.threshold / value) / rates[-1]
        if to_threshold > 3 * last_gap:
            return None
        return {
            "early": True,
            "doubling_steps": math.log(2) / rates[-1],
            "steps_to_threshold": to_threshold,
        }

    def _finding(self, step, name, value, state, severity) -> Finding:  # noqa: ANN001
        evidence = {ATTN_LOGIT_MAX.name: value, "threshold": self.threshold}
        evidence[PREVIOUS_READING] = self._readings.previous
        if state is not None:
            floor = state[0]
            evidence.update(
                floor=floor,
                growth_factor=value / floor if floor > 0 else math.inf,
                rising_records=int(state[2]),
            )
        return Finding(self.kind, step, where=name, evidence=evidence, severity=severity)


# The largest logit of a head settled at its bound moves less than this share between readings.
SETTLED = 0.01
# float32's machine epsilon: its resolution relative to a value.
FLOAT32_EPSILON = 2.0**-23


# The loss's running median (over ``LOSS_WINDOW`` records) this many times its best, and
# ``GAVE_BACK`` of what it had learnt (its first value less that best) above it: it turned
# worse, and logits that grew meanwhile were not growing with the model's confidence. (The best
# is the lowest of many noisy medians, so a later one reads 1.2x it by chance where the batches
# scatter; a fitted loss at a hundredth of its first value scatters that much and gives back
# nothing.)
LOSS_WINDOW, WORSE, GAVE_BACK = 5, 1.2, 0.1

# The loss's gradient in the logits' common shift, over its size, at or below minus this: a
# term rewards raising every logit. A loss of the softmax alone reads 0 up to float32 rounding
# of its probabilities (1e-8 to 1e-6 in the collection's healthy runs); that rounding is the
# same size as a row's gradient only once the row's loss is below about 1e-4, so the reading
# is trusted where the loss is at least SHIFT_TRUSTED_LOSS.
SHIFT_REWARDED, SHIFT_TRUSTED_LOSS = 1e-3, 1e-3
# A push this strong (a tenth of the whole gradient) is no rounding: one reading proves it.
SHIFT_DOMINANT = 0.1


class OutputLogitDivergence(Detector):
    """The output log-partition ``log Z = logsumexp(logits)`` (mean over rows) drifting away
    from zero, as in the divergence Wortsman et al. 2023 describe (all logits driven far
    negative; z-loss holds ``log Z`` near 0).

    At initialisation ``log Z ~ log(classes)``. A confident classifier has a large positive
    ``log Z`` (about its largest logit): healthy. Fires (warning) when ``log Z`` stays at or
    below ``-lse_limit`` for ``patience`` records, unless it drifted there and stopped (the
    largest logit moved less than ``SETTLED`` of itself since the reading before: a cosine head
    settled at its bound); early, when it has fallen ``lse_limit / 2`` below its first value (or
    below ``log(classes)``, where the first value stood above it) and kept falling for
    ``patience`` records (or risen ``lse_limit / 2`` and kept rising, or risen at each of
    ``patience`` readings by more each time, or risen ``lse_limit / 4`` and at each of twice
    ``patience`` readings, while the loss has not even halved); and when it
    drifts ``5 * lse_limit`` from its first value either way; and when the mean logit (the
    common shift softmax ignores, recorded by the default cross-entropy signal) has moved
    ``lse_limit`` from its first value for ``patience`` records (unless settled so). Where the
    loss earned the logits (halved, nothing rewarding their level) and they were computed at
    float32's resolution or finer (``record.meta[OUTPUT_EPSILON]``; unknown reads as float32),
    ``log Z`` at or below ``-lse_limit``, its drift of ``5 * lse_limit`` and the mean logit's
    move give way to one reading: ``log Z`` above the mean logit drifted ``5 * lse_limit``; the
    common level is a shift the softmax does not see, which costs resolution only in half
    precision. And when
    ``log Z`` rose ``lse_limit`` while the loss has not even halved (logits growing without the
    confidence that would justify them; a classifier growing confident raises ``log Z`` as its
    loss falls) or has gone below zero (no cross-entropy does: the loss is not these logits');
    and when it rose ``lse_limit / 2`` since the loss's best running median and kept rising for
    ``patience`` readings while the loss turned ``WORSE`` than that best, giving back
    ``GAVE_BACK`` of what it had learnt (growth no confidence explains, in a run whose loss
    had halved long before). A loss whose gradient pushes
    every logit up (``output_shift_gradient`` at or below ``-SHIFT_REWARDED`` at two readings
    in a row, or ``-SHIFT_DOMINANT`` at one: a z-loss with its sign flipped; no loss of the
    softmax alone can), or a binary cross-entropy whose targets fall outside ``[0, 1]``
    (``output_targets_outside`` above 0 at one reading: it has no minimum there), vouches for
    no growth however far it fell: the rises above count as if it had not halved, and a rise of
    ``lse_limit / 8`` kept for ``patience`` readings is enough, or any rise at each of
    ``patience`` readings with the push read at as many.
    Where the first ``log Z`` stood above ``log(classes)`` (logits inflated at initialisation),
    falls count from ``log(classes)``, rises from the lowest ``log Z`` read (inflated logits
    shrink as training starts; their level before that is the initialisation's, a temperature
    applied the wrong way, and only a climb from where they came down to is a drift), and the
    first loss, inflated with them, from a uniform guess's. ``where`` is the module that
    produced the logits (``record.meta[OUTPUT_MODULE]``) when known. NaN-driven records are
    skipped. Rises and falls are counted between readings on the signal's cadence
    (:class:`Cadence`): the extra readings taken after a finding read the next steps' batches,
    whose scatter is not the drift.

    Example:
        >>> OutputLogitDivergence(lse_limit=20).update(Record(5, {"logit_lse_mean": -3.0}))
        []
    """

    kind = OUTPUT_LOGIT_DIVERGENCE
    reads = (
        LOGIT_LSE_MEAN,
        OUTPUT_LOGIT_MAX,
        OUTPUT_LOGIT_RMS,
        OUTPUT_LOGIT_MEAN,
        OUTPUT_SHIFT_GRADIENT,
        OUTPUT_TARGETS_OUTSIDE,
        SOFTMAX_COLLAPSE,
        LOSS,
    )
    emits = (OUTPUT_LOGIT_DIVERGENCE,)

    def __init__(self, lse_limit: float = 20.0, patience: int = 3) -> None:
        self.lse_limit = finite_float("lse_limit", lse_limit, low=0.0, low_open=True)
        self.patience = positive_int("patience", patience)
        self._streak = _Streak()
        self._readings = Readings()
        self._first: float | None = None
        self._previous = math.nan
        self._falling = 0
        self._rising = 0
        self._last: collections.deque[float] = collections.deque(maxlen=patience + 1)
        self._tops: collections.deque[float] = collections.deque(maxlen=2)
        self._cadence = Cadence()
        self._first_mean: float | None = None
        self._first_spread = math.nan  # log Z above the mean logit, at the first reading
        self._first_loss: float | None = None
        self._lowest = math.inf  # the lowest log Z read
        self._losses: collections.deque[float] = collections.deque(maxlen=LOSS_WINDOW)
        self._best: tuple[float, float] | None = None  # best loss median, log Z read by then
        self._lse = math.nan  # the latest log Z read
        self._rewarded = 0  # readings in a row whose loss rewards raising every logit
        self._class_targets = False  # logits read from a cross-entropy with class targets

    def _accelerating(self) -> bool:
        """``log Z`` rose at every one of the last ``patience`` readings, each rise larger than
        the one before, by ``lse_limit / 5`` in all: growth that compounds (a z-loss with its
        sign flipped), long before it is large."""
        last = list(self._last)
        if len(last) <= self.patience:
            return False
        rises = [b - a for a, b in zip(last, last[1:], strict=False)]
        compounding = rises[0] > 0 and all(b > a for a, b in zip(rises, rises[1:], strict=False))
        return compounding and last[-1] - last[0] >= self.lse_limit / 5

    def _worse_since_best(self, loss: float | None) -> float:
        """How far ``log Z`` rose since the loss's best running median, when the loss is now
        ``WORSE`` times that best and has given back ``GAVE_BACK`` of what it had learnt (0
        otherwise): logits still growing once the loss stopped improving and turned back, which
        no growing confidence explains."""
        if loss is None or not math.isfinite(loss):
            return 0.0
        self._losses.append(loss)
        if len(self._losses) < LOSS_WINDOW or not math.isfinite(self._lse):
            return 0.0
        median = statistics.median(self._losses)
        if self._best is None or median < self._best[0]:
            self._best = (median, self._lse)
            return 0.0
        best, lse_then = self._best
        learnt = (self._first_loss or math.inf) - best
        worse = median >= WORSE * best and median - best >= GAVE_BACK * learnt
        return self._lse - lse_then if best > 0 and worse else 0.0

    def update(self, record: Record) -> list[Finding]:
        if record.nonfinite:
            return []  # NaN-driven values are no evidence of this mechanism
        lse = record.values.get(LOGIT_LSE_MEAN.name)
        if lse is not None and math.isfinite(lse):
            self._lse = lse
        since_best = self._worse_since_best(record.values.get(LOSS.name))
        if lse is None or not math.isfinite(lse):
            return []
        self._readings.read(record.step)
        if self._first is None:
            self._first = lse
        self._lowest = min(self._lowest, lse)
        drift = lse - self._first
        on_cadence = self._cadence.on(record.step)  # rises and falls are counted on it
        if on_cadence:
            self._last.append(lse)
            self._falling = self._falling + 1 if lse < self._previous else 0
            self._rising = self._rising + 1 if lse > self._previous else 0
            self._previous = lse
        limit = self.lse_limit
        # A fall counts from where a softmax over these classes sits with every logit at 0
        # (log classes), when it started above that: logits inflated at initialisation (a head
        # without its scaling) shrink as training goes, towards it, not away from it; a rise
        # counts from the lowest log Z read, their level before that being the start's.
        classes = record.meta.get(OUTPUT_CLASSES)
        inflated = bool(classes) and self._first > math.log(classes)
        start = math.log(classes) if inflated else self._first
        early = lse - start <= -limit / 2 and self._falling >= self.patience
        # A head bounded by construction (a cosine classifier's logits are a scale times a
        # cosine) settles at its bound, far from where it started: its largest logit then
        # holds still from one reading to the next, where a drift moves it. (A slow, steady
        # drift is the early warning's, which does not ask this.)
        top = record.values.get(OUTPUT_LOGIT_MAX.name)
        if top is not None and math.isfinite(top) and on_cadence:
            self._tops.append(top)
        tops = self._tops
        still = len(tops) == 2 and abs(tops[1] - tops[0]) <= SETTLED * abs(tops[0])
        settled = still and abs(drift) >= limit / 2  # moved there, and stopped
        far = (lse <= -limit and not settled) or abs(drift) >= 5 * limit
        mean = record.values.get(OUTPUT_LOGIT_MEAN.name)
        spread_drift = math.nan  # the drift of log Z above the mean logit: what a softmax sees
        if mean is not None and math.isfinite(mean):
            if self._first_mean is None:
                self._first_mean, self._first_spread = mean, lse - mean
            far = far or (abs(mean - self._first_mean) >= limit and not settled)
            spread_drift = (lse - mean) - self._first_spread
        loss = record.values.get(LOSS.name)
        earned = False  # the loss vouches for the logits' growth
        shift = record.values.get(OUTPUT_SHIFT_GRADIENT.name)
        if math.isfinite(record.values.get(SOFTMAX_COLLAPSE.name, math.nan)):
            self._class_targets = True
        outside = record.values.get(OUTPUT_TARGETS_OUTSIDE.name, 0.0)
        if outside > 0 and on_cadence:
            # a binary cross-entropy's targets outside [0, 1]: no finite logit minimises the
            # loss on them, and it pushes their logits on for good; one reading proves it
            self._rewarded += 2
        elif shift is not None and math.isfinite(shift) and on_cadence:
            trusted = loss is None or not math.isfinite(loss) or abs(loss) >= SHIFT_TRUSTED_LOSS
            pushed = shift <= -SHIFT_REWARDED and trusted
            # a dominant push counts as two readings: no rounding makes it
            strength = 2 if shift <= -SHIFT_DOMINANT else 1
            self._rewarded = self._rewarded + strength if pushed else 0
        # the loss itself pushes every logit up: the growth is its doing, however well the
        # rest of the loss goes
        rewarded = self._rewarded >= 2
        if loss is not None and math.isfinite(loss):
            if self._first_loss is None:
                self._first_loss = loss
            # A rise counts from there too; and the first loss, inflated with those logits,
            # from a uniform guess's, log(classes)
            first_loss = min(self._first_loss, start) if inflated else self._first_loss
            # the loss has not even halved; or it is negative, which a softmax's cross-entropy
            # never is: a term of the wrong sign rewards the logits, and the loss cannot vouch
            # for their growth. Unless the logits were read from a cross-entropy against class
            # targets (the softmax-collapse share is read from those alone): that term is never
            # negative, and a negative total is another term's (a learnt log-variance weighting
            # the tasks of a multi-task loss). A hand-written one (soft targets against
            # log_softmax, a smoothing weight typed above 1) can be, and say so.
            negative = loss < 0 and not self._class_targets
            # a loss that started at or below zero (a policy gradient's surrogate) has no level
            # to halve and no sign to lose: only a term proven to reward the logits accuses them
            anchored = first_loss > 0
            unearned = rewarded or (anchored and (loss >= 0.5 * first_loss or negative))
            earned = anchored and not unearned
            rise = lse - (self._lowest if inflated else start)
            far = far or (rise >= limit and unearned)
            early = early or (unearned and (rise >= limit / 2 and self._rising >= self.patience))
            early = early or (unearned and self._accelerating())
            # a steady climb: risen at each of twice ``patience`` readings, a quarter of the limit
            early = early or (unearned and rise >= limit / 4 and self._rising >= 2 * self.patience)
            # rewarded: a rise of an eighth of the limit, still going, is the term's doing; and
            # any rise at each of ``patience`` readings, with the push proven at as many
            early = early or (rewarded and rise >= limit / 8 and self._rising >= self.patience)
            early = early or (
                self._rewarded >= self.patience and rise > 0 and self._rising >= self.patience
            )
        # A loss that earned the logits (halved, nothing rewarding their level) and logits held
        # at float32's resolution or finer: their common level is a shift the softmax does not
        # see, and costs nothing at this resolution (it does in half precision: Wortsman et
        # al.); only log Z's drift above the mean logit counts (a learnt scale grown 400-fold)
        precise = record.meta.get(OUTPUT_EPSILON, FLOAT32_EPSILON) <= FLOAT32_EPSILON
        if earned and precise and math.isfinite(spread_drift):
            far = abs(spread_drift) >= 5 * limit
        # risen half the limit since the loss was at its best, the loss turned worse since
        early = early or (since_best >= limit / 2 and self._rising >= self.patience)
        if not self._streak.update(early or far, 1 if early else self.patience):
            return []
        evidence = {
            LOGIT_LSE_MEAN.name: lse,
            "initial": self._first,
            "drift": drift,
            "lse_limit": limit,
            PREVIOUS_READING: self._readings.before(self._streak.count),
        }
        names = (
            OUTPUT_LOGIT_MAX,
            OUTPUT_LOGIT_RMS,
            OUTPUT_LOGIT_MEAN,
            OUTPUT_SHIFT_GRADIENT,
            OUTPUT_TARGETS_OUTSIDE,
        )
        for name in (metric.name for metric in names):
            if name in record.values:
                evidence[name] = record.values[name]
        where = record.meta.get(OUTPUT_MODULE)
        return [Finding(self.kind, record.step, where, evidence, "warning")]


def _falling(values: collections.deque[float]) -> bool:
    """Each value of a full deque lower than the one before."""
    v = list(values)
    return len(v) == values.maxlen and all(b < a for a, b in zip(v, v[1:], strict=False))


# The share of rows collapsed at which the SoftmaxCollapse detector fires, by default.
COLLAPSED_SHARE = 0.1
# A loss whose running median stands at this share of its first value or below fits its data:
# rows that round to one-hot then are that fit (see SoftmaxCollapse), where no fixed number
# scaled the logits. Over the kept runs of sets 480-638, every softmax-collapse fault's logits
# were scaled by one: read between the head and the loss (a temperature), or inside the head
# from its first reading (a cosine head's scale: max |logit| 84 to 2e6 at step 0). Rows that
# rounded from logits a model grew itself came with fits at up to a quarter of the first loss
# (a cyclic rate's lows at 24%, a batch ramp at 10%, a warm-up bump at 4.5%) and with the
# growth other detectors name (output logits, attention).
FITTED = 0.25
# Logits this far apart round a float32 softmax to one-hot: exp(-m) under half its epsilon.
ROUNDING_MARGIN = math.log(2.0 / FLOAT32_EPSILON)
FITTED_AT = "fitted"  # evidence of a collapse on a fit: the loss then, a share of its first


class SoftmaxCollapse(Detector):
    """Fires when the ``softmax_collapse`` fraction is at or above ``fraction`` at the latest
    reading and at ``patience`` of the last ``2 * patience - 1`` (most of them: a fraction read
    on one small batch, a few-shot episode's queries, swings from one reading to the next): that
    share of the rows gets exactly zero gradient on its correct class, the float32 failure
    behind stalled grokking (Prieto et al. 2025). Once a tenth of the rows have collapsed the
    run is deep in "naive loss minimisation" (logits growing along the weights) and the share
    keeps rising. Fix: StableMax cross-entropy, ⊥Grad, weight decay, or a float64 softmax.

    Rows that collapse once the loss (its running median) has fallen to ``FITTED`` of its first
    value are found at severity info, with evidence ``fitted``: cross-entropy drives a model that
    fits its data to ever surer rows, and nothing is left to learn on them, unless a fixed number
    multiplies the logits (``output_scale`` above 1: a temperature, a scale typo; or logits
    ``ROUNDING_MARGIN`` apart at the first reading, before any learning: a scale inside the
    head), which made the rows round where the model's own logits would not. Whether such a
    fit stalls generalisation (grokking delayed, Prieto et al. 2025) only a held-out loss can
    tell.

    Example:
        >>> det = SoftmaxCollapse()
        >>> found = [f for t, x in enumerate([0.0, 0.2, 0.05, 0.3, 0.25])
        ...          for f in det.update(Record(t, {"softmax_collapse": x}))]
        >>> [(f.step, f.evidence["streak_began"]) for f in found]
        [(4, 1)]
    """

    kind = SOFTMAX_COLLAPSE_KIND
    reads = (SOFTMAX_COLLAPSE, LOSS, OUTPUT_SCALE, OUTPUT_LOGIT_MAX)
    emits = (SOFTMAX_COLLAPSE_KIND,)

    def __init__(self, fraction: float = COLLAPSED_SHARE, patience: int = 3) -> None:
        self.fraction = finite_float("fraction", fraction, low=0.0, low_open=True, high=1.0)
        self.patience = positive_int("patience", patience)
        self._recent: collections.deque[tuple[int, float]] = collections.deque(
            maxlen=2 * self.patience - 1
        )
        self._fired = False
        self._readings = Readings()
        self.loss = SustainedLevel()
        self._scaled = False  # a fixed number above 1 has multiplied the logits
        self._born_wide: bool | None = None  # rows could round at the first reading

    def update(self, record: Record) -> list[Finding]:
        if record.nonfinite:
            return []  # NaN-driven values are no evidence of this mechanism
        loss = record.values.get(LOSS.name)
        if loss is not None and math.isfinite(loss) and not record.meta.get("skipped"):
            self.loss.add(loss, record.step)
        self._scaled = self._scaled or record.values.get(OUTPUT_SCALE.name, 0.0) > 1.0
        widest = record.values.get(OUTPUT_LOGIT_MAX.name)
        if self._born_wide is None and widest is not None and math.isfinite(widest):
            self._born_wide = widest >= ROUNDING_MARGIN
        if SOFTMAX_COLLAPSE.name not in record.values:
            return []
        value = record.values[SOFTMAX_COLLAPSE.name]
        self._readings.read(record.step)
        self._recent.append((record.step, value))
        high = [step for step, v in self._recent if v >= self.fraction]
        if len(high) < self.patience:
            self._fired = False  # most readings are clear again: a new episode can start
            return []
        if self._fired or value < self.fraction:
            return []
        self._fired = True
        evidence = {
            SOFTMAX_COLLAPSE.name: value,
            "fraction": self.fraction,
            PREVIOUS_READING: self._readings.preceding(high[0]),
            STREAK_BEGAN: high[0],
        }
        severity = Severity.WARNING
        fixed = self._scaled or self._born_wide  # a number, not the model, set their scale
        if not fixed and 0 < self.loss.current <= FITTED * self.loss.first:
            severity, evidence[FITTED_AT] = Severity.INFO, self.loss.current / self.loss.first
        where = record.meta.get(OUTPUT_MODULE)  # the head that produced the logits, if known
        return [Finding(self.kind, record.step, where, evidence, severity)]


# A tensor whose gradient's running RMS stood under this share of the step's whole gradient's
# was all but shut off (a branch behind a zero-initialised or near-zero gate, a path a sparse
# selection seldom takes): its first real gradient, thousands of times that level, is the path
# opening. (HYV4's query down-projection sat at 3e-5 of the step; a WaveGrad noise embedding
# whose moment a raw batch poisoned, at 7e-3.)
ASLEEP = 1e-3


class GradientSpike(Detector):
    """Per parameter tensor: fires when ``grad_norm^2 > theta * v``, ``v`` being the running
    (bias-corrected, ``beta``) second moment of that tensor's gradient norm before this step.

    SPAM's spike test, at the level of a tensor's norm (``theta=5000`` as in SPAM, i.e. a norm
    about 71 times its running RMS). A spike enters ``v`` clipped to ``theta * v``, so one spike
    does not mask the next. No finding in the first ``warmup`` records of a tensor. A spiking
    tensor that carries less than ``share`` of the step's global gradient norm (a LayerNorm
    weight in a healthy transformer) is reported at severity info, short of critical (a critical
    spike poisons the tensor's own Adam moment, whatever its share); so is one, however far it
    rose, whose level stood under ``ASLEEP`` of the step's (waking up; rounding residue).
    Evidence: ``spike_factor = grad_norm / sqrt(v)``.

    Example:
        >>> detector = GradientSpike(warmup=1)
        >>> detector.update(Record(0, {"grad_norm/fc.weight": 1.0}))
        []
        >>> detector.update(Record(1, {"grad_norm/fc.weight": 1000.0}))[0].evidence["spike_factor"]
        1000.0
    """

    kind = GRADIENT_SPIKE
    reads, emits = (GRAD_NORM, GRAD_NORM_PRECLIP), (GRADIENT_SPIKE,)

    def __init__(
        self,
        theta: float = 5000.0,
        beta: float = 0.999,
        warmup: int = 10,
        signal: str = GRAD_NORM.name,
        share: float = 0.1,
    ) -> None:
        self.theta = finite_float("theta", theta, low=1.0, low_open=True)
        self.share = finite_float("share", share, low=0.0, high=1.0)
        self.beta = finite_float("beta", beta, low=0.0, high=1.0, high_open=True)
        self.warmup = positive_int("warmup", warmup)
        self.signal = signal
        # Per tensor, as arrays in the order of the family's names: the running second moment,
        # the records seen, whether it is in a spike. Tensors absent from the current layout
        # keep theirs in ``_parked`` (name -> (v, count, in_spike)).
        self._names: tuple[str, ...] = ()
        self._v = np.zeros(0)
        self._count = np.zeros(0, dtype=np.int64)
        self._in_spike = np.zeros(0, dtype=bool)
        self._parked: dict[str, tuple[float, int, bool]] = {}
        self._total_v, self._total_count = 0.0, 0  # the same moment of the step's whole norm

    def update(self, record: Record) -> list[Finding]:
        if record.nonfinite:
            return []  # NaN-driven values are no evidence of this mechanism
        names, norms = record.family_array(self.signal)
        if not len(names):
            return []
        total = record.values.get(GRAD_NORM.name, math.nan)
        total = total if math.isfinite(total) else 0.0
        if self.signal == GRAD_NORM.name:  # each tensor's norm before the loop's clipping
            shrunk = shrunk_by_clipping(record, total)
            norms, total = norms * shrunk, total * shrunk
        self._align(names)
        v, count, in_spike = self._v, self._count, self._in_spike
        finite = np.isfinite(norms)  # non-finite ones are the non-finite detector's business
        square = np.where(finite, norms * norms, 0.0)
        warm = finite & (count >= self.warmup)
        with np.errstate(divide="ignore", invalid="ignore"):
            v_hat = np.where(warm, v / (1 - self.beta**count), 0.0)
        # a tensor whose gradient has been exactly 0 has no level to stand out of (a GAN
        # critic's output bias, its gradient's real and fake halves cancelling): its first
        # gradient that is not starts one
        spike = warm & (v_hat > 0) & (square > self.theta * v_hat)
        steps = self._total_count
        asleep = ASLEEP**2 * self._total_v / (1 - self.beta**steps) if steps else 0.0
        findings = []
        for i in np.flatnonzero(spike & ~in_spike).tolist():
            norm, moment = float(norms[i]), float(v_hat[i])
            factor = norm / math.sqrt(moment) if moment > 0 else math.inf
            evidence = {
                "grad_norm": norm,
                "running_rms": math.sqrt(moment),
                "spike_factor": factor,
                "theta": self.theta,
            }
            severity = "critical" if factor * factor > 100 * self.theta else "warning"
            if norm < self.share * total and (severity == "warning" or moment < asleep):
                # a small share of the step's gradient: its own moment only. However far it
                # rose, from a level all but nothing beside the step's: a tensor waking up
                severity = "info"
            findings.append(Finding(self.kind, record.step, names[i], evidence, severity))
        self._in_spike = np.where(warm, spike, in_spike)
        square = np.where(warm & (v_hat > 0), np.minimum(square, self.theta * v_hat), square)
        self._v = np.where(finite, self.beta * v + (1 - self.beta) * square, v)
        self._count = count + finite
        if total > 0:
            self._total_v = self.beta * self._total_v + (1 - self.beta) * total * total
            self._total_count += 1
        return findings

    def _align(self, names: tuple[str, ...]) -> None:
        """Order the state as ``names`` (a new layout happens once, or when tensors come and go)."""
        if names is self._names or names == self._names:
            self._names = names
            return
        self._parked.update(
            zip(
                self._names,
                zip(self._v.tolist(), self._count.tolist(), self._in_spike.tolist(), strict=True),
                strict=True,
            )
        )
        state = [self._parked.pop(n, (0.0, 0, False)) for n in names]
        self._names = names
        self._v = np.array([s[0] for s in state], dtype=float)
        self._count = np.array([s[1] for s in state], dtype=np.int64)
        self._in_spike = np.array([s[2] for s in state], dtype=bool)


# A layer with this share of its units dead is lost whatever its first reading said.
NEARLY_ALL = 0.9
# A share of a layer's units that died between two readings (after its first two, which see
# training settle): killed at a stroke (a learning-rate glitch, a knock), not grown sparse.
KILLED = 1 / 3


class PlasticityLoss(Detector):
    """Per layer: fires when ``dead_units`` stays at or above ``dead_fraction`` (and half the
    units alive at the first reading have died, or ``NEARLY_ALL`` of them are dead, or
    ``dead_fraction`` of them are fed exactly zero: ``zeroed_units``), or when
    ``effective_rank`` stays at or below ``rank_drop`` times its largest value so far, for
    ``patience`` records (Dohare et al. 2024). Units killed at a stroke (``KILLED`` of the
    layer's units dead from one reading to the next, after its first two) count while they
    stay dead, short of ``dead_fraction``. Evidence names which of the two it was. Dead
    units found while the loss still improves (not ``NEARLY_ALL`` of them, none fed zero) are
    info: a trained network grows sparse on its own; the same layer is a warning once the loss
    turns worse than its best with them still dead; and found again, with them still dead, when
    the loss learnt on past them to a new best and then stalled (where they cost it).

    Saturated: ``NEARLY_ALL`` of a layer's tanh or sigmoid outputs in their flat tails
    (``saturated``) for ``patience`` records, the model's output module left out (a confident
    classifier's sigmoid is saturated, and learns): units that pass almost no gradient.

    Early, while the units are still dying: when the share of a layer's outputs its ReLU passes
    (``relu_active``) has fallen to ``dying`` times its first value while the loss is not
    improving. The share alone is no evidence: trained networks grow sparse on their own (the
    "lazy neuron" phenomenon, Li et al. 2023) while their loss falls.

    Example:
        >>> PlasticityLoss().update(Record(0, {"dead_units/fc.act": 0.1}))
        []
    """

    kind = LOSS_OF_PLASTICITY
    reads = (DEAD_UNITS, ZEROED_UNITS, RELU_ACTIVE, SATURATED, EFFECTIVE_RANK, LOSS)
    emits = (LOSS_OF_PLASTICITY,)

    def __init__(
        self,
        dead_fraction: float = 0.5,
        rank_drop: float = 0.5,
        patience: int = 2,
        dying: float = 0.25,
    ) -> None:
        self.dead_fraction = finite_float("dead_fraction", dead_fraction, low=0.0, high=1.0)
        self.rank_drop = finite_float("rank_drop", rank_drop, low=0.0, high=1.0, high_open=True)
        self.patience = positive_int("patience", patience)
        self.dying = finite_float("dying", dying, low=0.0, high=1.0, high_open=True)
        self._dead: dict[str, _Streak] = {}
        self._idle: set[str] = set()  # layers found dead while the loss still improved
        self._harmed = FoundAgain()  # layers found dead with the loss stalled
        self._rank: dict[str, _Streak] = {}
        self._best_rank: dict[str, float] = {}
        self._dying: dict[str, _Streak] = {}
        self._first_active: dict[str, float] = {}
        self._first_dead: dict[str, float] = {}
        self._last_dead: dict[str, tuple[float, int]] = {}  # the last reading, readings so far
        self._killed: dict[str, float] = {}  # the dead share before units were killed at once
        self._saturated: dict[str, _Streak] = {}
        self._output: str | None = None  # the model's output module, once a record names it
        self.loss = SustainedLevel()
        self._readings = Readings()

    def update(self, record: Record) -> list[Finding]:
        if record.nonfinite:
            return []  # NaN-driven values are no evidence of this mechanism
        loss = record.values.get(LOSS.name)
        if loss is not None and math.isfinite(loss):
            self.loss.add(loss, record.step)
        findings = []
        # Other evidence (the units' share falling four-fold) stands beside it: a loss a tenth
        # of its scale off its best is enough, however noisy.
        stalled = math.isfinite(self.loss.current) and loss_stalled(self.loss, noise_z=0.0)
        active_share, dead_share = record.family(RELU_ACTIVE.name), record.family(DEAD_UNITS.name)
        ranks = record.family(EFFECTIVE_RANK.name)
        if active_share or dead_share or ranks:
            self._readings.read(record.step)
        for name, active in active_share.items():
            first = self._first_active.setdefault(name, active)
            streak = self._dying.setdefault(name, _Streak())
            if streak.update(stalled and active <= self.dying * first, self.patience):
                evidence = {"reason": "dying_units", "relu_active": active, "first": first}
                findings.append(self._finding(record.step, name, evidence, streak))
        zeroed = record.family(ZEROED_UNITS.name)
        for name, dead in dead_share.items():
            first = self._first_dead.setdefault(name, dead)
            before, readings = self._last_dead.get(name, (dead, 0))
            self._last_dead[name] = (dead, readings + 1)
            if readings >= 2 and dead - before >= KILLED - 1e-6:
                self._killed[name] = before
            # Units idle on the whole batch from the start are the inputs' doing (non-negative,
            # correlated features: point clouds, graph sums, pooled maps), not units dying:
            # half of those alive at the first reading must have died, or nearly all of them.
            # Units fed exactly zero (a gain set to 0) are dead whenever they were zeroed.
            lost = dead >= NEARLY_ALL or zeroed.get(name, 0.0) >= self.dead_fraction
            died = dead >= first + (1.0 - first) / 2 or lost
            # Units dead while the loss still improves cost it nothing yet (trained networks
            # grow sparse on their own): info, a warning once the loss turns worse, them dead.
            # Nearly all dead, or fed zero, is harm in itself; with no loss read, the units alone.
            harm = lost or stalled or not math.isfinite(self.loss.current)
            # Units killed at a stroke and still dead are lost capacity even short of the
            # share that marks a layer grown sparse.
            killed = name in self._killed and dead >= self._killed[name] + KILLED - 1e-6
            if name in self._killed and not killed:
                del self._killed[name]  # they came back: a noisy reading, not a stroke
            holds = dead >= self.dead_fraction and died or killed
            streak = self._dead.setdefault(name, _Streak())
            if (
                streak.update(holds, self.patience)
                or (holds and harm and name in self._idle)
                or (holds and self._harmed.due(name, self.loss, stalled))
            ):
                evidence = {"reason": "dead_units", "dead_units": dead, "limit": self.dead_fraction}
                if killed:
                    evidence["dead_before"] = self._killed[name]  # then killed at a stroke
                if not harm:
                    evidence["note"] = "the loss still improves: they cost it nothing yet"
                severity = "warning" if harm else "info"
                findings.append(self._finding(record.step, name, evidence, streak, severity))
                if harm:
                    self._idle.discard(name)
                    self._harmed.found(name, self.loss)
                else:
                    self._idle.add(name)
            elif not holds:
                self._idle.discard(name)
                self._harmed.forget(name)
        self._output = record.meta.get(OUTPUT_MODULE, self._output)
        for name, share in record.family(SATURATED.name).items():
            # tanh/sigmoid units in their flat tails pass (almost) no gradient: dead by another
            # name. The model's own output is left out: a confident classifier's is saturated.
            streak = self._saturated.setdefault(name, _Streak())
            if streak.update(share >= NEARLY_ALL and name != self._output, self.patience):
                evidence = {"reason": "saturated_units", "saturated": share, "limit": NEARLY_ALL}
                findings.append(self._finding(record.step, name, evidence, streak))
        for name, rank in ranks.items():
            if not math.isfinite(rank):
                continue
            best = max(self._best_rank.get(name, rank), rank)
            self._best_rank[name] = best
            streak = self._rank.setdefault(name, _Streak())
            if streak.update(rank <= self.rank_drop * best, self.patience):
                evidence = {
                    "reason": "rank_collapse",
                    "effective_rank": rank,
                    "best_rank": best,
                    "rank_drop": self.rank_drop,
                }
                findings.append(self._finding(record.step, name, evidence, streak))
        return findings

    def _finding(
        self, step: int, name: str, evidence: dict, streak: _Streak, severity: str = "warning"
    ) -> Finding:
        evidence[PREVIOUS_READING] = self._readings.before(streak.count)
        return Finding(self.kind, step, name, evidence, severity)


def _is_bias(name: str) -> bool:
    """A bias by PyTorch's naming: ``fc.bias``, and ``nn.MultiheadAttention``'s ``in_proj_bias``,
    ``bias_k`` and ``bias_v`` (``in_proj_bias`` starts at zero too)."""
    last = name.rpartition(".")[2]
    return last == "bias" or last.endswith("_bias") or last.startswith("bias_")


class UpdateRatioOutOfRange(Detector):
    """Per parameter tensor: ``update_ratio = ||dw|| / ||w||`` above ``high`` (divergence risk:
    each step rewrites a large share of the weights) or below ``low`` (a frozen layer), for
    ``patience`` records in a row. Non-finite ratios are skipped, and a tensor that started at
    exactly zero (its first ratio infinite: a learnt mask or class token, a zero-initialised
    gate; or 0/0, not yet moved) and biases (``nn.MultiheadAttention``'s ``in_proj_bias`` too, which usually start at
    zero) are never judged too large: their norm was not set by an initialiser's scale, so their
    ratio can stay large for the whole of a healthy run; nor is a large ratio that fell at each of
    those records (a tensor growing out of a small start, as a learnt attention query vector
    does).

    A step the optimizer did not take (``optimizer_skipped``: a GradScaler's overflow, a
    micro-batch's ``mon.step``) is no reading. A frozen reading while the loss (its running
    median) is exactly 0 is info: nothing is left to learn.

    A parameter frozen and outside the optimizer at attach that later gets gradients no step
    applies (the record's ``gradients_not_applied``) is a warning too: a layer unfrozen after
    the optimizer was built without it.

    ``high=0.25``: Adam moves each weight by about ``lr`` per step, so a 0.02-scale layer sits near
    ``lr / 0.02``, i.e. 0.05 at lr 1e-3; a ratio of a quarter per step is far outside that.

    Example:
        >>> UpdateRatioOutOfRange().update(Record(3, {"update_ratio/fc.weight": 1e-3}))
        []
    """

    def __init__(self, high: float = 0.25, low: float = 1e-7, patience: int = 3) -> None:
        self.high = finite_float("high", high, low=0.0, low_open=True)
        self.low = finite_float("low", low, low=0.0, high=self.high, high_open=True)
        self.patience = positive_int("patience", patience)
        self._high: dict[str, _Streak] = {}
        self._recent: dict[str, collections.deque[float]] = {}  # the last ratios of each tensor
        self._low: dict[str, _Streak] = {}
        self._unused: set[str] = set()  # tensors found to be dead code (UNUSED_PARAMETERS)
        self._on_purpose: set[str] = set()  # requires_grad=False at attach (FROZEN_AT_ATTACH)
        self._from_zero: set[str] = set()  # tensors whose first ratio was infinite: w = 0
        # the most an SGD-like step makes of one gradient, in rates (None: not such a step)
        self._gain: float | None = None
        # each group's learning rate: (its peak so far, its last reading, how often it fell)
        self._rates: dict[str, tuple[float, float, int]] = {}
        self.loss = SustainedLevel()
        self._frozen = FoundAgain()  # tensors found frozen (a warning)
        # the last records' values: a tensor read at 0 with no gradient that had one in them
        # was a path that step left out
        self._lately: collections.deque[dict[str, float]] = collections.deque(maxlen=self.LATELY)

    kind = UPDATE_RATIO_OUT_OF_RANGE
    # A schedule that cut every group's rate this many times from its peak, in RATE_CUTS drops
    # or more, froze the layers by design (ReduceLROnPlateau after the loss settled, a decay to
    # zero): info here; the diagnosis judges from the loss whether the cuts came too early.
    SCHEDULE_CUT, RATE_CUTS = 100.0, 3
    reads = (UPDATE_RATIO, GRAD_NORM, PARAM_NORM, LEARNING_RATE, LOSS, OPTIMIZER_SKIPPED)
    emits = (UPDATE_RATIO_OUT_OF_RANGE,)
    # A gradient under this share of the median tensor's (each against its weights) vanishes.
    VANISHING = 1e-3
    # What a momentum can make of one gradient: 1/(1 - momentum), for momenta up to 0.99.
    MOMENTUM_GAIN = 100.0
    # A step this share of plain SGD's at the largest rate or more was taken (a momentum's
    # sum of gradients that change sign makes less than one of them; a frozen tensor, none).
    STEPPED = 0.1
    # Records looked back at for a gradient a tensor read at 0 without one had just before.
    LATELY = 10

    def update(self, record: Record) -> list[Finding]:
        # read before anything is skipped: the first record says them, and may be an overflow
        self._on_purpose.update(record.meta.get(FROZEN_AT_ATTACH, ()))
        if OPTIMIZER_FAMILY in record.meta:
            family = record.meta[OPTIMIZER_FAMILY]
            scaled = family in GRADIENT_SCALED
            self._gain = (1.0 if family == "sgd" else self.MOMENTUM_GAIN) if scaled else None
        self._read_rates(record)
        if record.nonfinite:
            return []  # NaN-driven values are no evidence of this mechanism
        loss = record.values.get(LOSS.name)
        if loss is not None and math.isfinite(loss):
            self.loss.add(loss, record.step)
        # read once a record, and only while a frozen tensor may be found again
        stalled = bool(self._frozen) and math.isfinite(self.loss.current)
        stalled = stalled and loss_stalled(self.loss, noise_z=0.0)
        findings = []
        for name in record.meta.get(GRADIENTS_NOT_APPLIED, ()):
            # unfrozen after the optimizer was built without it: trained by nothing
            evidence = {
                "direction": "not_in_optimizer",
                "note": "it gets gradients, and nothing ever updates it: unfrozen after the "
                "optimizer was built without it? add it to the optimizer",
            }
            findings.append(Finding(self.kind, record.step, name, evidence, "warning"))
        for name in record.meta.get(UNUSED_PARAMETERS, ()):
            # Dead code, not a frozen layer: its value never reaches what the loss reads.
            self._unused.add(name)
            evidence = {
                "direction": "unused",
                "note": "no gradient, and its value changes nothing the loss reads",
            }
            findings.append(Finding(self.kind, record.step, name, evidence, "info"))
        values, lately = record.values, self._lately
        lately.append(values)
        if values.get(OPTIMIZER_SKIPPED.name):
            return findings  # no update was applied: a ratio of 0 says nothing of a layer
        for name, ratio in record.family(UPDATE_RATIO.name).items():
            key = GRAD_NORM.key(name)
            if ratio == 0.0 and not values.get(key) and any(v.get(key) for v in lately):
                # no gradient this step, one in the steps just before: a path this step left
                # out (drop-path, an expert nothing was routed to), not a frozen layer
                continue
            if name not in self._recent and (ratio == math.inf or math.isnan(ratio)):
                # its first update moved weights of exactly zero (inf), or none yet (0/0: a
                # zero-initialised scalar behind a zero-initialised layer, Fixup's biases)
                self._from_zero.add(name)
            if not math.isfinite(ratio) or _is_bias(name):
                continue
            if name in self._unused:
                continue
            too_large = self._high.setdefault(name, _Streak())
            recent = self._recent.setdefault(name, collections.deque(maxlen=self.patience))
            recent.append(ratio)
            if too_large.update(ratio > self.high and name not in self._from_zero, self.patience):
                if _falling(recent):
                    # a tensor growing out of a small start: its steps stay the size the
                    # optimizer takes while its norm grows, so the ratio falls as it grows
                    too_large.fired = False
                else:
                    evidence = {"direction": "too_large", "update_ratio": ratio, "high": self.high}
                    findings.append(Finding(self.kind, record.step, name, evidence, "warning"))
            frozen = self._low.setdefault(name, _Streak())
            if ratio >= self.low:
                self._frozen.forget(name)
            again = ratio < self.low and self._frozen.due(name, self.loss, stalled)
            if frozen.update(ratio < self.low, self.patience) or again:
                evidence = {"direction": "frozen", "update_ratio": ratio, "low": self.low}
                severity = "warning"
                vanishing = self._vanishing(record, name, ratio)
                if vanishing is not None:
                    # the optimizer steps it, by what its gradient asks: nearly nothing
                    evidence.update(direction="vanishing", gradient_share=vanishing)
                    severity = "info"
                elif name in self._on_purpose:
                    # the code said so: a fixed table, a fine-tuning recipe's frozen block
                    evidence["note"] = "requires_grad=False since the start: frozen on purpose?"
                    severity = "info"
                elif (cut := self._cut_by_schedule()) is not None:
                    evidence["rate_cut"] = cut
                    severity = "info"
                elif self.loss.current == 0.0:
                    # a loss at exactly zero (a cross-entropy rounded to 0 in float32) has
                    # nothing left to learn: the gradients vanished with it, no update is due
                    evidence["note"] = "the loss is exactly 0: nothing left to learn"
                    severity = "info"
                if severity == "warning":
                    self._frozen.found(name, self.loss)
                findings.append(Finding(self.kind, record.step, name, evidence, severity))
        return findings

    def _read_rates(self, record: Record) -> None:
        for key, rate in record.family(LEARNING_RATE.name).items():
            if not (math.isfinite(rate) and rate > 0):
                continue
            peak, last, drops = self._rates.get(key, (rate, rate, 0))
            self._rates[key] = (max(peak, rate), rate, drops + (rate < last))

    def _cut_by_schedule(self) -> float | None:
        """How many times the schedule cut the rates from their peaks (the least over the
        groups), when it cut every group's ``SCHEDULE_CUT`` times or more in ``RATE_CUTS``
        drops or more; None otherwise."""
        if not self._rates:
            return None
        cuts = [
            peak / last for peak, last, drops in self._rates.values() if drops >= self.RATE_CUTS
        ]
        if len(cuts) < len(self._rates) or min(cuts) < self.SCHEDULE_CUT:
            return None
        return min(cuts)

    def _vanishing(self, record: Record, name: str, ratio: float) -> float | None:
        """``|g|/|w|`` of tensor ``name`` over the median tensor's, when its gradient is there
        but under ``VANISHING`` of that, or when the optimizer's step is the gradient times the
        rate and the largest rate (with a momentum's gain) makes of it a ratio under ``low``,
        too small for float32 weights to register, or when its gradient is under the median
        tensor's and its update ``ratio`` at least ``STEPPED`` of plain SGD's step at the
        largest rate (stepped by what a quiet gradient asks, at a rate a schedule decayed; with
        a typical gradient, a rate too small for the model is no quiet tensor's doing): a
        tensor that moves by nothing because its
        gradient is nothing is not frozen (an architecture's quiet path, a gate shut before
        it); None otherwise."""
        grads, weights = record.family(GRAD_NORM.name), record.family(PARAM_NORM.name)
        g, w = grads.get(name), weights.get(name)
        if not g or not w or not (math.isfinite(g) and math.isfinite(w)):
            return None
        ratios = [grads[n] / weights[n] for n in grads if weights.get(n)]
        typical = float(np.median(ratios)) if ratios else 0.0
        share = (g / w) / typical if typical > 0 else math.inf
        if share < self.VANISHING:
            return share
        if self._gain is None:
            return None
        rates = [r for r in record.family(LEARNING_RATE.name).values() if math.isfinite(r)]
        plain = max(rates, default=math.inf) * g / w  # plain SGD's step at the largest rate
        # a gradient quieter than the median tensor's, stepped: slow because it asks little
        stepped = share < 1.0 and ratio >= self.STEPPED * plain
        return share if plain * self._gain < self.low or stepped else None


__all__ = [
    "AttentionLogitGrowth",
    "GradientSpike",
    "OutputLogitDivergence",
    "PlasticityLoss",
    "SoftmaxCollapse",
    "UpdateRatioOutOfRange",
]
