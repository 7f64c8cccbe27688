"""Reads of a run that several causes share: whether it learnt after a step, spikes between steps,
skipped steps, per-member families, and how far a loss spike jumped and whether it recurs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from steadygrad.core import Finding
from steadygrad.core.metrics import LOSS, OPTIMIZER_SKIPPED
from steadygrad.diagnose.detectors.training import GRAD_NORM_SPIKE, recurring_period
from steadygrad.diagnose.detectors.transformer import GRADIENT_SPIKE
from steadygrad.diagnose.rules.base import _running_medians
from steadygrad.diagnose.rules.facts import RunFacts

# A fixed number the logits are multiplied by after their layer at least this large is a
# temperature applied the wrong way (logits / 0.02): the contrastive defaults stay under it
# (1 / 0.07 = 14.3), a cosine head's scale of 30-64 saturates its softmax as it fits.
FIXED_TEMPERATURE = 20.0


# Steps of progress (a new best loss) after a cause was seen that show it did not stop learning.
PROGRESS_AFTER = 20
# Steps after a cause was seen with no progress (the running median never a tenth below the
# loss then) that show it stopped learning, whatever came later (units that revived at last).
STALLED_FOR = 100


def learnt_after(facts: RunFacts, step: int | None) -> int | None:
    """The step of the run's best sustained loss, when it came ``PROGRESS_AFTER`` steps or more
    after ``step`` and a tenth or more below the loss then (a flat loss sets a new lowest
    median now and then by its noise alone), and below where the run started: coming back
    from a jolt (the first updates thrown far off) to where it began is no learning; else
    None."""
    best, loss = facts.best_loss_step, facts.series(LOSS.name)
    if step is None or best is None or loss is None or best - step < PROGRESS_AFTER:
        return None
    steps, values = loss
    ok = np.isfinite(values)
    then = values[ok & (np.abs(steps - step) <= 5)]
    after = values[ok & (steps <= best) & (steps > best - 5)]
    if not len(then) or not len(after):
        return None
    level = float(np.median(then))
    start = values[ok][0] if ok.any() else math.inf
    if start > 0 and start < level:
        level = float(start)
    progress = level - 0.1 * abs(level)  # a tenth below the loss then
    if float(np.median(after)) > progress:
        return None
    # progress that began only after a long flat stretch came after the cause, not despite it
    since = ok & (steps >= step)
    later, width = values[since], 5
    medians = _running_medians(later, width) if len(later) >= width else later[:0]
    below = np.flatnonzero(medians <= progress)
    if len(below) and steps[since][below[0] + width - 1] - step >= STALLED_FOR:
        return None
    return best


def _spikes_between(facts: RunFacts, start: int, stop: int) -> list[int]:
    """The steps of the gradient spikes (not info) from ``start`` up to, not at, ``stop``."""
    return [
        f.step
        for f in facts.of(GRAD_NORM_SPIKE, GRADIENT_SPIKE)
        if f.severity != "info" and start <= f.step < stop
    ]


def _too_large(f: Finding) -> bool:
    """An update-ratio finding of updates too large for their weights (not too small)."""
    return f.evidence.get("direction") == "too_large"


def _modules_of(parameters: list[str]) -> list[str]:
    """The modules holding ``parameters`` (``fc1.weight`` -> ``fc1``), once each, in order."""
    return list(dict.fromkeys(n.rpartition(".")[0] or n for n in parameters))


def _other_members(members: dict[str, list[str]], key: str) -> list[str]:
    return [n for k, names in members.items() if k != key for n in names]


def _family_at(
    facts: RunFacts, metric: Any, step: int, finite_only: bool = True
) -> dict[str, float]:
    """Each member of a per-tensor or per-module family (``metric``: its members' series are
    ``name/member``) with a finite reading at ``step`` (any reading, with ``finite_only``
    False), by member."""
    values: dict[str, float] = {}
    for name in facts.names:
        if metric.owns(name) and "/" in name:
            steps, series = facts.series(name)
            at = series[steps == step]
            if len(at) and (np.isfinite(at[0]) or not finite_only):
                values[name.split("/", 1)[1]] = float(at[0])
    return values


def _quarter_medians(values: np.ndarray) -> list[float]:
    """The median of each quarter of ``values``, in order."""
    return [float(np.median(part)) for part in np.array_split(values, 4)]


def _grew_in_quarters(values: np.ndarray, times: float, fewest: int = 8) -> float | None:
    """How many times a series' median over its last quarter stood over its first quarter's,
    when that was ``times`` or more and the last quarter's was above the third's (still
    growing); None otherwise, or with fewer than ``fewest`` finite readings."""
    finite = values[np.isfinite(values)]
    if len(finite) < fewest:
        return None
    q = _quarter_medians(finite)
    if not q[0] > 0 or q[-1] < times * q[0] or not q[-1] > q[-2]:
        return None
    return q[-1] / q[0]


def _skipped_steps(facts: RunFacts) -> set[int]:
    """The steps the optimizer did not take (the series has an entry at those steps only)."""
    skipped = facts.series(OPTIMIZER_SKIPPED.name)
    return set() if skipped is None else set(skipped[0][skipped[1] > 0].tolist())


def _batches_behind(spikes: list[Finding], evidence: dict[str, Any]) -> str:
    """Name the batch behind the first spike that has ids (adds them to ``evidence``)."""
    ids = next((f.batch_ids for f in spikes if f.batch_ids), None)
    if not ids:
        return ""
    evidence["batch_ids"] = ids[:32]
    return f"; batch ids {ids[:8]}"


def _in_a_climb(facts: RunFacts, step: int) -> bool:
    """Whether the loss was already climbing (a loss divergence found) before ``step``."""
    return facts.climbing_from is not None and step > facts.climbing_from


# A loss spike this many times above every loss of the steps after it was a one-off event.
ONE_OFF = 10.0


# Evidence of a one-off event: the steps after it until the loss was back to normal (None when
# it never came back).
BACK_WITHIN = "back_within_steps"


def _jump(spike: dict) -> str:
    """How far a loss spike rose: times its baseline, or from it when it is not positive."""
    if "ratio" in spike:
        return f"{spike['ratio']:.3g}x its baseline"
    return f"from a baseline of {spike.get('baseline', math.nan):.3g} to {spike.get('loss', math.nan):.3g}"


def _within_half(losses: np.ndarray, baseline: float) -> np.ndarray:
    """Which losses stand less than half their baseline's size above it (under 1.5x a positive
    baseline; a negative log-likelihood's can be below zero)."""
    return losses - baseline < 0.5 * abs(baseline)


def _recurring(facts: RunFacts, spike: Finding) -> int | None:
    """The spacing at which the loss stood out around ``spike`` as it did there
    (:func:`recurring_period`, over the whole run); None for a run that broke."""
    ratio = spike.evidence.get("ratio")
    loss = facts.series(LOSS.name)
    if facts.broke_at is not None or loss is None or ratio is None:
        return None
    steps, values = loss
    at = np.flatnonzero(steps == spike.step)
    return recurring_period(values, int(at[0]), ratio) if len(at) else None
