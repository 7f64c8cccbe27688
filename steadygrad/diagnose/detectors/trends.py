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
import statistics
from collections import deque

import numpy as np

from steadygrad.core import Finding, FindingKind, Record, Severity
from steadygrad.core.checks import finite_float, positive_int
from steadygrad.core.metrics import DIRECTIONAL_SHARPNESS_RATIO, GRAD_NORM, LOSS
from steadygrad.diagnose.detectors.base import Detector

LOSS_DIVERGENCE = FindingKind(
    "loss_divergence", "the loss climbed well above the best level it had sustained"
)
GRADIENT_GROWTH = FindingKind(
    "gradient_growth", "the gradient norm grew far above its best sustained level, and keeps on"
)
UNSTABLE_STEPS = FindingKind(
    "unstable_steps", "successive updates overshoot: curvature along the step above 2/lr"
)


class SustainedLevel:
    """The running median of the last ``window`` values and the lowest such median so far.

    Example:
        >>> level = SustainedLevel(window=3)
        >>> for x in [5.0, 4.0, 3.0, 9.0, 3.5, 3.2]:
        ...     level.add(x)
        >>> level.floor, level.current
        (3.5, 3.5)
    """

    def __init__(self, window: int = 5) -> None:
        self.values: deque[float] = deque(maxlen=window)
        self.floor = math.inf
        self.floor_step: int | None = None
        self.current = math.nan

    def add(self, value: float, step: int | None = None) -> None:
        self.values.append(value)
        if len(self.values) < min(3, self.values.maxlen or 3):
            return
        self.current = statistics.median(self.values)
        if self.current < self.floor:
            self.floor, self.floor_step = self.current, step

    def noise(self) -> float:
        """1.4826 x the MAD of the window: the spread of single values around the median."""
        med = statistics.median(self.values)
        return 1.4826 * statistics.median(abs(v - med) for v in self.values)


class LossDivergence(Detector):
    """The loss's running median rises ``rise`` (relative) above its best sustained level, by
    more than ``noise_z`` times its own noise, for ``patience`` records in a row: warning; at
    ``critical_ratio`` times that level: critical. Once per episode.

    Example:
        >>> det = LossDivergence()
        >>> losses = [2.5 - 0.01 * t for t in range(60)] + [2.0 + 0.06 * t for t in range(150)]
        >>> found = [f for t, x in enumerate(losses) for f in det.update(Record(t, {"loss": x}))]
        >>> [f.severity for f in found]
        ['warning', 'critical']
    """

    kind = LOSS_DIVERGENCE
    reads, emits = (LOSS,), (LOSS_DIVERGENCE,)

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
        self.level = SustainedLevel(positive_int("window", window))
        self._above = 0
        self._fired: set[str] = set()

    def update(self, record: Record) -> list[Finding]:
        loss = record.values.get(LOSS.name)
        if loss is None or not math.isfinite(loss) or record.meta.get("skipped"):
            return []
        level = self.level
        level.add(loss, record.step)
        if not math.isfinite(level.current) or not math.isfinite(level.floor):
            return []
        floor, now = level.floor, level.current
        scale = max(abs(floor), 1e-12)
        margin = max(self.rise * scale, self.noise_z * level.noise())
        above = now - floor > margin
        self._above = self._above + 1 if above else 0
        if now - floor < margin / 2:
            self._fired.clear()  # back near its best: a new episode can start
        severity = None
        if now - floor > (self.critical_ratio - 1) * scale and "critical" not in self._fired:
            severity = Severity.CRITICAL
        elif self._above >= self.patience and not self._fired:
            severity = Severity.WARNING
        if severity is None:
            return []
        self._fired.add(severity.value)
        evidence = {
            "loss_median": now,
            "best_level": floor,
            "best_level_step": level.floor_step,
            "ratio": now / floor if floor > 0 else math.inf,
        }
        return [Finding(self.kind, record.step, None, evidence, severity)]


class GradientGrowth(Detector):
    """The global gradient norm's running median ``growth`` times above its best sustained
    level and not falling, for ``patience`` records: warning (critical at ``critical`` times).
    ``where`` is the parameter whose own gradient norm left its best level first, by a factor
    of ``local_growth``: where the growth starts.

    Example:
        >>> det = GradientGrowth()
        >>> norms = [1.0] * 10 + [1.3**t for t in range(1, 20)]
        >>> found = [f for t, g in enumerate(norms)
        ...          for f in det.update(Record(t, {"grad_norm": g, "grad_norm/w": g}))]
        >>> found[0].where, found[0].severity
        ('w', 'warning')
    """

    kind = GRADIENT_GROWTH
    reads, emits = (GRAD_NORM,), (GRADIENT_GROWTH,)

    def __init__(
        self,
        growth: float = 10.0,
        critical: float = 100.0,
        patience: int = 3,
        local_growth: float = 3.0,
        window: int = 5,
    ) -> None:
        self.growth = math.log(finite_float("growth", growth, low=1.0, low_open=True))
        self.critical = math.log(finite_float("critical", critical, low=growth))
        self.patience = positive_int("patience", patience)
        self.local = math.log(finite_float("local_growth", local_growth, low=1.0, low_open=True))
        self.level = SustainedLevel(positive_int("window", window))
        self._above = 0
        self._fired: set[str] = set()
        self._names: list[str] = []
        self._ema: np.ndarray | None = None
        self._floor: np.ndarray | None = None
        self._first: np.ndarray | None = None  # step at which each tensor left its floor

    def update(self, record: Record) -> list[Finding]:
        norm = record.values.get(GRAD_NORM.name)
        if norm is None or not (math.isfinite(norm) and norm > 0) or record.nonfinite:
            return []
        self._track_tensors(record)
        level = self.level
        level.add(math.log(norm), record.step)
        if not math.isfinite(level.floor):
            return []
        rise = level.current - level.floor
        self._above = self._above + 1 if rise > self.growth else 0
        if rise < self.growth / 2:
            self._fired.clear()
        severity = None
        if rise > self.critical and self._above and "critical" not in self._fired:
            severity = Severity.CRITICAL
        elif self._above >= self.patience and not self._fired:
            severity = Severity.WARNING
        if severity is None:
            return []
        self._fired.add(severity.value)
        where, started = self._origin()
        evidence = {
            "grad_norm_median": math.exp(level.current),
            "best_level": math.exp(level.floor),
            "growth": math.exp(rise),
            "best_level_step": level.floor_step,
        }
        if where is not None:
            evidence["started_at_step"] = started
        return [Finding(self.kind, record.step, where, evidence, severity)]

    def _track_tensors(self, record: Record) -> None:
        family = record.family(GRAD_NORM.name)
        if not family:
            return
        if list(family) != self._names:  # first record, or the set of tensors changed
            self._names = list(family)
            self._ema = self._floor = self._first = None
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log(np.fromiter(family.values(), float, len(family)))
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
        left = np.flatnonzero(self._first >= 0)
        if not len(left):
            return None, None
        rise = (self._ema - self._floor)[left]
        # the earliest to leave its floor; among those, the one that rose most
        order = np.lexsort((-rise, self._first[left]))
        i = left[order[0]]
        return self._names[i], int(self._first[i])


class UnstableSteps(Detector):
    """The directional sharpness ratio (curvature along the update against 2/lr; see
    :mod:`steadygrad.monitor.update_curvature`) above ``limit`` in ``hits`` of the last
    ``window`` readings: the optimizer's steps overshoot along their own direction, the
    signature of a learning rate above the stability limit. Gradient descent at the edge of
    stability hovers at 1 (Cohen et al. 2021), so the default asks for a clear excess.

    Example:
        >>> det = UnstableSteps()
        >>> found = [f for t in range(6)
        ...          for f in det.update(Record(t, {"directional_sharpness_ratio": 2.5}))]
        >>> [f.step for f in found]
        [2]
    """

    kind = UNSTABLE_STEPS
    reads, emits = (DIRECTIONAL_SHARPNESS_RATIO,), (UNSTABLE_STEPS,)

    def __init__(self, limit: float = 1.5, hits: int = 3, window: int = 5) -> None:
        self.limit = finite_float("limit", limit, low=0.0, low_open=True)
        self.hits = positive_int("hits", hits)
        self.recent: deque[float] = deque(maxlen=positive_int("window", window))
        self._fired = False

    def update(self, record: Record) -> list[Finding]:
        ratio = record.values.get(DIRECTIONAL_SHARPNESS_RATIO.name)
        if ratio is None or record.nonfinite or not math.isfinite(ratio):
            return []
        self.recent.append(ratio)
        above = sum(r > self.limit for r in self.recent)
        if above == 0:
            self._fired = False
        if above < self.hits or self._fired:
            return []
        self._fired = True
        evidence = {
            "directional_sharpness_ratio": ratio,
            "median_recent": statistics.median(self.recent),
            "limit": self.limit,
        }
        return [Finding(self.kind, record.step, None, evidence, Severity.WARNING)]
