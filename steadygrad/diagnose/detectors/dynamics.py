"""Training-dynamics detectors: read what the opt-in probes of :mod:`steadygrad.dynamics` record.

:class:`Memorising` reads the m-coherence of :class:`~steadygrad.GradientCoherenceProbe`
(Chatterjee 2020; Chatterjee and Zielinski 2022): per-example gradients of learnable data agree
(coherence well above 1) while the loss falls; when the loss falls with the gradients near
orthogonal (coherence about 1 or below), each example is being fitted on its own.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from steadygrad.core.checks import finite_float, positive_int
from steadygrad.core.finding import Finding, FindingKind
from steadygrad.core.metrics import LOSS
from steadygrad.core.severity import Severity
from steadygrad.diagnose.detectors.base import Detector
from steadygrad.dynamics.coherence import GRADIENT_COHERENCE

if TYPE_CHECKING:
    from steadygrad.core.record import Record

MEMORISING = FindingKind(
    "memorising",
    "the training loss falls while the per-example gradients stay near orthogonal (low "
    "gradient coherence): the network fits examples one by one instead of a shared pattern",
    Severity.WARNING,
)


class Memorising(Detector):
    """Fires once per episode when, over ``patience`` consecutive coherence probes, the
    m-coherence stayed below ``low`` while the smoothed training loss fell by at least
    ``min_fall`` (relative) and is still above ``loss_share`` of its starting level.

    The last condition keeps a healthy run quiet: once a learnable sample is nearly fitted its
    coherence falls too (the few examples left pull apart), but by then the loss is a small
    fraction of where it started. Silent on runs without ``gradient_coherence`` (the probe is
    opt-in). Evidence: the coherence at the probes, the smoothed loss then and at the start.

    Example:
        >>> from steadygrad.core.record import Record
        >>> det = Memorising(patience=2)
        >>> found = []
        >>> for step, loss in enumerate([2.3, 2.0, 1.7, 1.4, 1.2, 1.1]):
        ...     values = {"loss": loss, "gradient_coherence": 1.0} if step % 2 else {"loss": loss}
        ...     found += det.update(Record(step, values))
        >>> [f.kind for f in found]
        ['memorising']
    """

    kind = MEMORISING
    reads = (GRADIENT_COHERENCE, LOSS)
    emits = (MEMORISING,)

    def __init__(
        self,
        low: float = 2.0,
        patience: int = 4,
        min_fall: float = 0.05,
        loss_share: float = 0.5,
        smoothing: float = 0.9,
    ) -> None:
        self.low = finite_float("low", low, low=0.0, low_open=True)
        self.patience = positive_int("patience", patience)
        if self.patience < 2:
            raise ValueError(f"patience must be an int >= 2 (a trend), got {patience!r}")
        self.min_fall = finite_float(
            "min_fall", min_fall, low=0.0, high=1.0, low_open=True, high_open=True
        )
        self.loss_share = finite_float("loss_share", loss_share, low=0.0, high=1.0, high_open=True)
        self.smoothing = finite_float("smoothing", smoothing, low=0.0, high=1.0, high_open=True)
        self.loss_ema: float | None = None
        self.start_loss: float | None = None
        self.probes: list[tuple[int, float, float]] = []  # (step, coherence, smoothed loss)
        self.active = False

    def update(self, record: Record) -> list[Finding]:
        loss = record.get(LOSS.name)
        if math.isfinite(loss):
            s = self.smoothing
            self.loss_ema = loss if self.loss_ema is None else s * self.loss_ema + (1 - s) * loss
            if self.start_loss is None:
                self.start_loss = loss
        coherence = record.get(GRADIENT_COHERENCE.name)
        if not math.isfinite(coherence) or self.loss_ema is None:
            return []
        if coherence >= self.low:  # the gradients agree: the episode (if any) is over
            self.probes.clear()
            self.active = False
            return []
        self.probes = [*self.probes, (record.step, coherence, self.loss_ema)][-self.patience :]
        if self.active or len(self.probes) < self.patience:
            return []
        first_loss, now = self.probes[0][2], self.probes[-1][2]
        falling = now < (1 - self.min_fall) * first_loss
        far_from_fitted = now > self.loss_share * self.start_loss
        if not (falling and far_from_fitted):
            return []
        self.active = True
        evidence = {
            "coherence": [round(c, 4) for _, c, _ in self.probes],
            "probe_steps": [st for st, _, _ in self.probes],
            "loss_then": first_loss,
            "loss_now": now,
            "loss_start": self.start_loss,
            "low": self.low,
        }
        return [Finding(MEMORISING, record.step, None, evidence)]
