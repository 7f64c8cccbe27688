"""Detectors of the basic failure modes: loss spikes, gradient-norm spikes, NaN/Inf."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from steadygrad.core.checks import finite_float, positive_int
from steadygrad.diagnose.detectors.base import Detector, RobustBaseline
from steadygrad.core.finding import Finding

if TYPE_CHECKING:
    from steadygrad.core.record import Record


class SpikeDetector(Detector):
    """Flags a value far above its recent robust baseline (median/MAD of the last ``window``).

    One Finding per episode: after a spike the detector stays quiet until ``cooldown`` recorded
    steps in a row look normal again. Non-finite values are left to :class:`NonFiniteDetector`.
    """

    signal = "loss"

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
            ratio = value / self.untransform(median) if self.untransform(median) else math.inf
            spiking = z > self.threshold and ratio >= self.min_ratio
            if spiking and self._quiet_needed == 0:
                evidence = {
                    self.signal: value,
                    "baseline": self.untransform(median),
                    "ratio": ratio,
                    "z": z,
                }
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


class LossSpikeDetector(SpikeDetector):
    """A loss far above its recent median (robust z-score over the last 64 recorded steps).

    Example:
        >>> detector = LossSpikeDetector()
        >>> # Monitor(model, optimizer, detectors=[detector, ...])
    """

    kind = "loss_spike"
    signal = "loss"


class GradNormSpikeDetector(SpikeDetector):
    """A global gradient norm far above its recent median, scored in log space (gradient norms
    are heavy-tailed) and required to be at least ``min_ratio`` times the median.

    When the run passes ``grad_norm_preclip`` (the norm before clipping), that is the norm
    watched, so a spike that clipping hid is still caught; the finding says it was clipped.
    """

    kind = "grad_norm_spike"
    signal = "grad_norm"

    def update(self, record: Record) -> list[Finding]:
        if "grad_norm_preclip" in record.values:
            self.signal = "grad_norm_preclip"
        findings = super().update(record)
        if findings and self.signal == "grad_norm_preclip":
            clipped = record.values.get("grad_norm", math.nan)
            for f in findings:
                f.evidence["clipped_to"] = clipped
                f.evidence["hidden_by_clipping"] = clipped < 0.5 * record.values[self.signal]
        return findings

    def __init__(self, threshold: float = 6.0, min_ratio: float = 3.0, **kwargs) -> None:
        kwargs.setdefault("rel_floor", 0.0)
        super().__init__(threshold=threshold, min_ratio=min_ratio, **kwargs)

    def transform(self, value: float) -> float:
        return math.log(value) if value > 0 else -math.inf

    def untransform(self, x: float) -> float:
        return math.exp(x)


class NonFiniteDetector(Detector):
    """NaN/Inf in the loss, the gradients or the weights, with where it was born.

    A step that a mixed-precision GradScaler skipped (the optimizer did not step, the loss and
    the weights are finite) is reported as a benign ``amp_overflow`` (severity info), not as a
    divergence.
    """

    kind = "nonfinite"

    def __init__(self) -> None:
        self._in_episode = False
        self._origin_known = False

    def update(self, record: Record) -> list[Finding]:
        v = record.values
        loss = v.get("loss", 0.0)
        bad_grads = v.get("nonfinite_grads", 0.0)
        bad_params = v.get("nonfinite_params", 0.0)
        loss_bad = not math.isfinite(loss)
        if not (loss_bad or bad_grads or bad_params):
            self._in_episode = False
            return []
        meta = record.meta
        if (
            meta.get("skipped")
            and meta.get("skipped_by") is None
            and not loss_bad
            and not bad_params
        ):
            evidence = {"nonfinite_grads": bad_grads, "grad_norm": v.get("grad_norm")}
            if "amp_scale" in v:
                evidence["amp_scale"] = v["amp_scale"]
            return [Finding("amp_overflow", record.step, None, evidence, "info")]
        forward = meta.get("forward_origin")
        backward = meta.get("backward_origin")
        if self._in_episode:
            if forward and not self._origin_known:
                # The forward guard armed by the first non-finite step found the producer.
                self._origin_known = True
                evidence = {"forward_origin": forward, "loss": loss}
                return [
                    Finding(
                        "nonfinite_origin", record.step, forward["module"], evidence, "critical"
                    )
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
    from steadygrad.diagnose.detectors import continual, curvature, transformer

    return [
        LossSpikeDetector(),
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
    ]
