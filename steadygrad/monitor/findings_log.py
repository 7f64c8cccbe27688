"""Findings people see: each finding of warning level or above goes to Python ``logging``.

Notebooks, SLURM logs, ``nohup`` and CI show no live status line, but they show the
``steadygrad`` logger (with no logging configured, Python prints warnings to stderr). Each
finding is logged once, with its step, where it happened and what to do; a critical one is also
raised as a :class:`SteadygradWarning` (``warnings.warn``), so it reaches those who only watch
warnings. Autopilot actions are logged at the warning level too: they change the run.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from steadygrad.core.finding import Finding
from steadygrad.core.metrics import MONITOR_ACTIONS
from steadygrad.core.record import Record
from steadygrad.core.severity import Severity
from steadygrad.core.sink import RunInfo, Sink

logger = logging.getLogger("steadygrad")


class SteadygradWarning(UserWarning):
    """A critical finding in a run steadygrad watches (also in the ``steadygrad`` log)."""


@cache
def _advice() -> dict[str, str]:
    """What to do about each built-in kind of finding (the diagnosis gives the full picture)."""
    from steadygrad.diagnose.detectors.training import (
        GRAD_NORM_SPIKE,
        LOSS_SPIKE,
        NONFINITE,
        NONFINITE_ORIGIN,
    )
    from steadygrad.diagnose.detectors.transformer import GRADIENT_SPIKE

    spike = (
        "clip the gradient norm (torch.nn.utils.clip_grad_norm_) or use a spike-aware "
        "optimizer (steadygrad.optim.StableSPAM)"
    )
    nonfinite = (
        "lower the learning rate, add gradient clipping, or let the autopilot skip such steps "
        "(Monitor(..., autopilot=steadygrad.Autopilot()))"
    )
    return {
        NONFINITE: nonfinite,
        NONFINITE_ORIGIN: "look at that module's inputs and scale first; then " + nonfinite,
        LOSS_SPIKE: (
            "if it recurs, lower the peak learning rate or lengthen the warm-up; look at the "
            "step's batch (mon.step(loss, batch_ids=ids))"
        ),
        GRAD_NORM_SPIKE: spike,
        GRADIENT_SPIKE: spike,
    }


def describe_finding(
    finding: Finding, run_dir: str | Path | None = None, meaning: str | None = None
) -> str:
    """One log line: what, when, where, the evidence, what it means, and what to do.

    Example:
        >>> print(describe_finding(Finding("loss_spike", step=7, evidence={"z": 9.0})))
        ... # doctest: +ELLIPSIS
        steadygrad warning: step 7: loss_spike (z=9). What to do: if it recurs, ...
    """
    advice = _advice().get(finding.kind)
    report = f"`steadygrad report {run_dir}`" if run_dir is not None else "`steadygrad report`"
    todo = f"{advice}; {report} names the cause" if advice else f"see {report} for the cause"
    means = f" ({meaning})" if meaning else ""
    return f"steadygrad {finding.severity}: {finding.describe()}{means}. What to do: {todo}."


class LoggingSink(Sink):
    """Logs each finding of ``level`` or above once (logger ``steadygrad``), warns on critical
    ones, and logs every autopilot action.

    Example:
        >>> sink = LoggingSink()
        >>> sink.write(Record(step=3, values={}), [Finding("nonfinite", 3, severity="critical")])
        ... # doctest: +SKIP
    """

    def __init__(
        self, level: str = "warning", warn_critical: bool = True, kinds: Iterable[Any] = ()
    ) -> None:
        Severity.rank(level)  # a clear error for an unknown level
        self.level = Severity(level)
        self.warn_critical = bool(warn_critical)
        # the FindingKind declarations the detectors emit: their one-line doc says what it means
        self.meanings = {str(k): k.doc for k in kinds if getattr(k, "doc", None)}
        self.run_dir: Path | None = None
        self._seen: set[tuple[str, int, str | None]] = set()

    def open(self, run: RunInfo) -> None:
        self.run_dir = run.run_dir

    def write(self, record: Record, findings: Sequence[Finding]) -> None:
        for finding in findings:
            severity = Severity(finding.severity)
            key = (finding.kind, finding.step, finding.where)
            if severity < self.level or key in self._seen:
                continue
            self._seen.add(key)
            message = describe_finding(finding, self.run_dir, self.meanings.get(finding.kind))
            critical = severity >= Severity.CRITICAL
            logger.log(logging.ERROR if critical else logging.WARNING, message)
            if critical and self.warn_critical:
                warnings.warn(message, SteadygradWarning, stacklevel=4)  # at mon.step()

    def action(self, step: int, kind: str, detail: Mapping[str, Any]) -> None:
        shown = ", ".join(f"{k}={v}" for k, v in detail.items())
        who = "steadygrad" if kind in MONITOR_ACTIONS else "steadygrad autopilot"
        logger.warning("%s: step %d: %s (%s)", who, step, kind, shown)
