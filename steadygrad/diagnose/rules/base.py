"""The ground every rule stands on: how specific a cause is (MECHANISM, EVENT, SYMPTOM), what a
check found (:class:`Found`), and small reads of findings and series that need no run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from steadygrad.core import Finding, Severity
from steadygrad.diagnose.detectors.training import NONFINITE
from steadygrad.diagnose.detectors.trends import GRADIENT_GROWTH, LOSS_DIVERGENCE, WRECKED_WEIGHTS

# How specific a cause is: a mechanism explains the symptoms that follow it, so it ranks first.
MECHANISM, EVENT, SYMPTOM = 3, 2, 1


@dataclass
class Found:
    """What a rule's check returns: the rule supplies the rest."""

    summary: str
    first_step: int | None = None
    where: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    severity: str | None = None
    consequence_of: str = ""  # what the check saw that produces this evidence by itself
    # how this instance's harm outlived the event that set it off (which then explains its
    # start, not the harm that stayed): another cause does not explain it away, and the
    # event's causes (``set_off_by``), when named, rank below it
    outlived: str = ""
    set_off_by: tuple[str, ...] = ()
    stalls: bool = False  # this instance only stalls learning (see Rule.stalls)
    # the mechanism this drives, found in the same module (a rate that makes the attention
    # logits or the output logits grow): it ranks just below it, and is told there
    drives: str = ""


def _running_medians(values: np.ndarray, width: int = 5) -> np.ndarray:
    """The median of each ``width`` values in a row (``len(values) >= width``)."""
    return np.median(sliding_window_view(values, width), axis=1)


def _lowest_median(steps: np.ndarray, values: np.ndarray, width: int = 5) -> int | None:
    """The step ending the ``width``-value window with the lowest median, if there is one."""
    if len(values) < width:
        return None
    return int(steps[width - 1 + int(np.argmin(_running_medians(values, width)))])


def _breaks(f: Finding) -> bool:
    return (
        f.kind == NONFINITE
        or (f.kind == LOSS_DIVERGENCE and f.severity == "critical")
        or (f.kind == GRADIENT_GROWTH and bool(f.evidence.get(WRECKED_WEIGHTS)))
    )


def layer_span(where: list[str]) -> str:
    """'h.3.attn, h.4.attn, h.5.attn' -> 'h.3.attn .. h.5.attn (3 layers)'."""
    where = sorted(set(where), key=_natural)
    if len(where) <= 2:
        return ", ".join(where)
    return f"{where[0]} .. {where[-1]} ({len(where)} layers)"


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in name.replace(".", " . ").split()]


def _serious(findings: list[Finding]) -> list[Finding]:
    """The findings not judged harmless (info), or all of them when every one was: harmless
    findings neither date nor place a cause that has serious ones."""
    return [f for f in findings if f.severity != Severity.INFO] or findings


def _first(findings: list[Finding]) -> int:
    return min(f.step for f in findings)


def _positive(values: np.ndarray) -> np.ndarray:
    """Which readings are finite and above 0 (learning rates to compare: a rate of 0 is none)."""
    return np.isfinite(values) & (values > 0)


def _inside(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")
