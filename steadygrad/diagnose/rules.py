"""Rules: from a run's findings and signals to causes, evidence, fixes, and the result behind them.

A rule is data (the cause, the published result it rests on, the fixes) plus one small function
that looks at the run and returns what it found, or None. To add a cause, add a function and a
:class:`Rule` to :data:`RULES`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from steadygrad.core import Finding, FindingKind, Severity
from steadygrad.core.metrics import (
    ACT_RMS,
    ACTIVATION_MODULES,
    AMP_SCALE,
    ATTN_LOGIT_MAX,
    DEAD_UNITS,
    DIRECTIONAL_SHARPNESS_RATIO,
    FLOAT16_OVERFLOW,
    GRAD_NORM,
    GRAD_NORM_PRECLIP,
    INPUT_LAYER,
    INPUT_RMS,
    LEARNING_RATE,
    LOGIT_LSE_MEAN,
    LOSS,
    MONITOR_ACTIONS,
    NONFINITE_GRADS,
    OPTIMIZER_FAMILY,
    OPTIMIZER_RESTARTED,
    OPTIMIZER_SKIPPED,
    OUTPUT_LAYER,
    OUTPUT_LOGIT_MAX,
    OUTPUT_SCALE,
    OUTPUT_SHIFT_GRADIENT,
    OUTPUT_TARGETS_OUTSIDE,
    PARAM_GROUPS,
    PARAM_NORM,
    PARAMETER_COUNT,
    RECURRENT_MODULES,
    RELU_ACTIVE,
    SATURATED,
    SHARPNESS,
    SHARPNESS_LIMIT,
    SOFTMAX_COLLAPSE,
    UPDATE_RATIO,
    ZEROED_UNITS,
)
from steadygrad.core.optimizer import (
    AVERAGES_ITERATES,
    FIRST_MOMENT_DECAY,
    GRADIENT_SCALED,
    PER_COORDINATE,
    SECOND_MOMENT_DECAY,
)
from steadygrad.diagnose.detectors.base import PREVIOUS_READING
from steadygrad.diagnose.detectors.continual import STABILITY_GAP_FOUND
from steadygrad.diagnose.detectors.curvature import SHARPNESS_ABOVE_LIMIT
from steadygrad.diagnose.detectors.dynamics import MEMORISING
from steadygrad.diagnose.detectors.training import (
    AMP_OVERFLOW,
    GRAD_NORM_SPIKE,
    HARD_BATCH,
    LOSS_SPIKE,
    NONFINITE,
    NONFINITE_ORIGIN,
    RECURS_EVERY,
    recurring_period,
)
from steadygrad.diagnose.detectors.transformer import (
    ATTENTION_LOGIT_GROWTH,
    COLLAPSED_SHARE,
    GRADIENT_SPIKE,
    LOSS_OF_PLASTICITY,
    OUTPUT_LOGIT_DIVERGENCE,
    SHIFT_DOMINANT,
    SHIFT_REWARDED,
    SHIFT_TRUSTED_LOSS,
    SOFTMAX_COLLAPSE_KIND,
    UPDATE_RATIO_OUT_OF_RANGE,
    AttentionLogitGrowth,
)
from steadygrad.diagnose.detectors.trends import (
    AT_INITIALISATION,
    BROKE_AT_ONCE,
    CHAIN_AMPLIFIED,
    GRADIENT_GROWTH,
    GROWTH_BEGAN,
    LOSS_DIVERGENCE,
    STEP_GAIN,
    UNSTABLE_STEPS,
    WRECKED_WEIGHTS,
    gain_chains,
    like_layers,
    rises_steadily,
    stack_chains,
)
from steadygrad.store.run import Run

# How specific a cause is: a mechanism explains the symptoms that follow it, so it ranks first.
MECHANISM, EVENT, SYMPTOM = 3, 2, 1


@dataclass(frozen=True)
class Fix:
    """One remedy: what to do, and the call that does it, runnable as printed after
    ``import steadygrad`` (and ``import torch``) on the model in question. ``applies`` says
    whether it fits the run (None: always)."""

    action: str
    code: str
    applies: Callable[[RunFacts], bool] | None = field(default=None, compare=False)


@dataclass
class Diagnosis:
    """A cause found in a run, with its evidence, fixes, and the published result behind it."""

    cause: str
    summary: str
    severity: str
    first_step: int | None
    where: list[str]
    evidence: dict[str, Any]
    fixes: list[Fix]
    reference: str
    tier: int = SYMPTOM
    score: float = 0.0
    confidence: str = ""
    why: str = ""
    explained_by: tuple[str, ...] = ()
    stalls: bool = False
    consequence_of: str = ""
    fault_alone: bool = False
    outlived: str = ""
    set_off_by: tuple[str, ...] = ()
    contained: bool = False
    drives: str = ""

    @property
    def rank_key(self) -> tuple:
        first = self.first_step if self.first_step is not None else math.inf
        return (-self.tier, -Severity.rank(self.severity), first)


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


@dataclass(frozen=True)
class Rule:
    """A cause: the finding kinds its check reads (each emitted by a detector), the published
    result behind it, its fixes, and the check. ``explained_by``: causes that, seen at or
    before this one, produce its evidence themselves (a step that overshoots makes the next
    gradient large), so this one is then their consequence. ``stalls``: the cause slows or
    stops learning but does not by itself make a loss climb (dead units), so it explains a
    break only if the loss made no progress after it was seen. ``fault_alone``: a stalling
    cause that is a fault even while the rest of the model learns around it (a layer whose
    updates are ~0 does not train at all; dead units, a normal sight in a ReLU network that
    goes on learning, are not), so in a run that did not break it ranks above an event
    nothing confirmed. ``contained``: the mechanism's harm stays in its own module (attention's
    output is a weighted mean of its values, however large its logits): it does not explain a
    non-finite value another module's forward made from finite inputs."""

    cause: str
    tier: int
    severity: str
    reference: str
    fixes: tuple[Fix, ...]
    check: Callable[[RunFacts], Found | None]
    kinds: tuple[FindingKind, ...] = ()
    explained_by: tuple[str, ...] = ()
    stalls: bool = False
    fault_alone: bool = False
    contained: bool = False

    def apply(self, facts: RunFacts) -> Diagnosis | None:
        facts.allowed = frozenset(self.kinds)
        try:
            found = self.check(facts)
        finally:
            facts.allowed = None
        if found is None:
            return None
        return Diagnosis(
            cause=self.cause,
            summary=found.summary,
            severity=found.severity or self.severity,
            first_step=found.first_step,
            where=found.where,
            evidence=found.evidence,
            fixes=[f for f in self.fixes if f.applies is None or f.applies(facts)],
            reference=self.reference,
            tier=self.tier,
            explained_by=self.explained_by,
            stalls=self.stalls or found.stalls,
            consequence_of=found.consequence_of,
            fault_alone=self.fault_alone,
            contained=self.contained,
            outlived=found.outlived,
            set_off_by=found.set_off_by,
            drives=found.drives,
        )


class RunFacts:
    """What the rules read: a run's findings by kind, and its series, each read once."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.findings = run.findings()
        self._series: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.allowed: frozenset[str] | None = None  # the kinds the rule being applied declared

    def of(self, *kinds: FindingKind) -> list[Finding]:
        if self.allowed is not None and not self.allowed.issuperset(kinds):
            raise LookupError(f"a rule read finding kinds it did not declare: {kinds}")
        return [f for f in self.findings if f.kind in kinds]

    @cached_property
    def names(self) -> set[str]:
        return set(self.run.names())

    def series(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        if name not in self.names:
            return None
        if name not in self._series:
            self._series[name] = self.run.series(name)
        return self._series[name]

    @cached_property
    def broke_at(self) -> int | None:
        """Where the run broke: its first non-finite step, critical divergence, or gradient
        explosion that wrecked the weights (their gradients then collapse), if any; not one the
        run came back from to a new best loss before it broke again (that break was over, and
        the later one is what ended the run), nor a last climb it came all the way back from."""
        broke = sorted({f.step for f in self.findings if _breaks(f)})
        for step, later in zip(broke, broke[1:], strict=False):
            if not self._bettered_between(step, later):
                return step
        if broke and self.came_back_from(broke[-1]):
            return None
        return broke[-1] if broke else None

    @cached_property
    def replaced_before_break(self) -> int | None:
        """The step the weights were put back between steps (a checkpoint reload, an EMA
        swap) just before the run broke, when the break followed it: the break's story starts
        there (:func:`_replaced_just_before`)."""
        broke = self.broke_at
        return None if broke is None else _replaced_just_before(self, broke)

    def came_back_from(self, step: int) -> bool:
        """Whether the break at ``step`` was only a climb of the loss (no NaN, no wrecked
        weights) that the run came all the way back from on its own, ending below the level
        it climbed from (a catapult, a knock it got over): no break."""
        at = [f for f in self.findings if f.step == step and _breaks(f)]
        if not at or any(f.kind != LOSS_DIVERGENCE for f in at):
            return False
        return _ended_below(self, at[0].evidence.get("best_level")) is not None

    def _bettered_between(self, step: int, later: int, width: int = 5) -> bool:
        """Whether the loss's running median (of ``width``) between ``step`` and ``later``
        went below its lowest before ``step``: a new best, the break at ``step`` got over."""
        loss = self.series(LOSS.name)
        if loss is None:
            return False
        steps, values = loss
        before = values[(steps < step) & np.isfinite(values)]
        between = values[(steps > step) & (steps < later)]
        if len(before) < width or len(between) < width or not np.isfinite(between).all():
            return False
        return bool(_running_medians(between, width).min() < _running_medians(before, width).min())

    @cached_property
    def made_at_once(self) -> str | None:
        """The module whose forward pass made the non-finite value the run broke on, from
        finite inputs, when a replay of that step with its own clean weights found it: a value
        made in one step (a bad sample, an overflow), not a loss that stalled into it."""
        for f in self.findings:
            if f.kind == NONFINITE and f.step == self.broke_at:
                origin = f.evidence.get("forward_origin") or {}
                if origin.get("replayed") and origin.get("module") and "in_the_loss" not in origin:
                    return origin["module"]
        return None

    @cached_property
    def climbing_from(self) -> int | None:
        """The step of the first finding that the loss is climbing (any loss divergence)."""
        climbs = [f.step for f in self.findings if f.kind == LOSS_DIVERGENCE]
        return min(climbs) if climbs else None

    def climbing_at(self, step: int) -> int | None:
        """The step the climb the loss was in at ``step`` was first found: the first loss
        divergence measured from the same best level as the last one at or before ``step`` (a
        climb the loss came back from, to a new best, is over); None when there was none."""
        climbs = [f for f in self.findings if f.kind == LOSS_DIVERGENCE and f.step <= step]
        if not climbs:
            return None
        last = climbs[-1]
        level = last.evidence.get("best_level_step")
        best = last.evidence.get("best_level")
        loss = self.series(LOSS.name)
        if isinstance(best, (int, float)) and loss is not None:
            steps, values = loss
            after = values[(steps > last.step) & (steps <= step) & np.isfinite(values)]
            if len(after) >= 5:
                medians = np.median(sliding_window_view(after, 5), axis=1)
                if float(medians.min()) < best:
                    return None  # back below the best it climbed from: that climb is over
        return min(f.step for f in climbs if f.evidence.get("best_level_step") == level)

    @cached_property
    def progress_until(self) -> int | None:
        """The step of the best sustained loss before the run broke: what the loss divergence
        that broke it says, else the lowest 5-step running median of the loss before the break
        (a NaN, an explosion)."""
        broke = self.broke_at
        if broke is None:
            return None
        climbs = [f for f in self.findings if f.kind == LOSS_DIVERGENCE and f.step == broke]
        step = climbs[0].evidence.get("best_level_step") if climbs else None
        if isinstance(step, (int, float)) and math.isfinite(step):
            return int(step)
        loss = self.series(LOSS.name)
        if loss is None:
            return None
        steps, values = loss
        keep = (steps < broke) & np.isfinite(values)
        return _lowest_median(steps[keep], values[keep])

    @cached_property
    def best_loss_step(self) -> int | None:
        """The step of the run's best sustained loss (its lowest 5-step running median)."""
        loss = self.series(LOSS.name)
        if loss is None:
            return None
        steps, values = loss
        return _lowest_median(steps[np.isfinite(values)], values[np.isfinite(values)])

    @cached_property
    def learning_rates(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each optimizer group's learning-rate series, in the groups' order."""
        prefix = LEARNING_RATE.name + "/"
        return [self.series(n) for n in sorted(self.names) if n.startswith(prefix)]

    @cached_property
    def optimizer(self) -> str:
        return str(self.run.config.get("optimizer", ""))

    @cached_property
    def adaptive(self) -> bool:
        """Whether the optimizer scales its step by a running square of the gradient (Adam,
        RMSprop, Adagrad: its family, recorded by the Monitor from
        :func:`steadygrad.core.optimizer_family`)."""
        return self.run.config.get(OPTIMIZER_FAMILY) in PER_COORDINATE

    @cached_property
    def activation_modules(self) -> dict[str, str]:
        """For a layer whose units were read, the activation module (``nn.ReLU``) whose
        forward read them, where one did (noted by the Monitor in the run's config)."""
        return dict(self.run.config.get(ACTIVATION_MODULES) or {})

    @cached_property
    def recurrent_modules(self) -> list[str]:
        """The modules applied in a recurrence (listed by the Monitor in the run's config)."""
        return list(self.run.config.get(RECURRENT_MODULES) or [])

    @cached_property
    def runaway_weights(self) -> tuple[str, int, float, float] | None:
        """The weight tensor that ran away before the trouble (see :func:`_runaway_weights`),
        read once: several rules ask. A fact of the run, read whatever kinds the rule that
        asks first declared."""
        allowed, self.allowed = self.allowed, None
        try:
            return _runaway_weights(self)
        finally:
            self.allowed = allowed

    @cached_property
    def output_layer(self) -> str | None:
        """The module whose weight matrix is nearest the model's output (recorded by the
        Monitor from the autograd graph: :mod:`steadygrad.monitor.output_layer`)."""
        layer = self.run.config.get(OUTPUT_LAYER)
        return layer if isinstance(layer, str) else None

    @cached_property
    def logit_heads(self) -> set[str]:
        """The modules that made the logits the loss read, as the output-logit findings name
        them (a learnt scale after the output layer: CLIP's ``logit_scale`` in a module of its
        own)."""
        kinds = (SOFTMAX_COLLAPSE.name, OUTPUT_LOGIT_DIVERGENCE)
        return {f.where for f in self.findings if f.kind in kinds and f.where}

    @cached_property
    def input_layer(self) -> str | None:
        """The first module holding weights that the forward ran: the one that read the
        model's input batch (noted by the Monitor in the run's config)."""
        layer = self.run.config.get(INPUT_LAYER)
        return layer if isinstance(layer, str) else None

    @cached_property
    def averages_iterates(self) -> bool:
        """Whether the weights the model trained with were an average of the optimizer's
        iterates (a schedule-free optimizer; see
        :func:`steadygrad.core.optimizer.averages_iterates`)."""
        return bool(self.run.config.get(AVERAGES_ITERATES))

    @property
    def grad_norm_made(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The gradient norm as the model made it: before clipping where the loop clipped
        (read from its ``clip_grad_norm_``), else as recorded."""
        return self.series(GRAD_NORM_PRECLIP.name) or self.series(GRAD_NORM.name)

    @cached_property
    def spike_carried(self) -> int:
        """How many steps after a gradient spike its update still moves the weights: about
        ``1 / (1 - decay)`` for an optimizer that keeps that share of its momentum each step
        (recorded by the Monitor from :func:`steadygrad.core.optimizer.first_moment_decay`),
        ``THROWN_WITHIN`` for one that keeps none or is not known."""
        decay = self.run.config.get(FIRST_MOMENT_DECAY)
        if not isinstance(decay, (int, float)) or not 0 < decay < 1:
            return THROWN_WITHIN
        return max(THROWN_WITHIN, math.ceil(1 / (1 - decay)))

    @cached_property
    def second_moment_decay(self) -> float | None:
        """What the optimizer keeps of its running square of the gradient per step (recorded
        by the Monitor from :func:`steadygrad.core.optimizer.second_moment_decay`; None when
        not known)."""
        decay = self.run.config.get(SECOND_MOMENT_DECAY)
        return float(decay) if isinstance(decay, (int, float)) and 0 < decay <= 1 else None


def _running_medians(values: np.ndarray, width: int = 5) -> np.ndarray:
    """The median of each ``width`` values in a row (``len(values) >= width``)."""
    return np.median(sliding_window_view(values, width), axis=1)


def _lowest_median(steps: np.ndarray, values: np.ndarray, width: int = 5) -> int | None:
    """The step ending the ``width``-value window with the lowest median, if there is one."""
    if len(values) < width:
        return None
    return int(steps[width - 1 + int(np.argmin(_running_medians(values, width)))])


# Steps of progress (a new best loss) after a cause was seen that show it did not stop learning.
PROGRESS_AFTER = 20
# Steps after the break (or a climb found) within which a growth confirmed late, but begun
# before, may be first: gradients found growing later than that grew with the climb.
CONFIRMED_SOON = 10


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
    return best if level - float(np.median(after)) >= 0.1 * abs(level) else None


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


def _located(kinds: tuple[FindingKind, ...], what: str) -> Callable[[RunFacts], Found | None]:
    """A check for a per-module finding family: where it happens and from which step."""

    def check(facts: RunFacts) -> Found | None:
        found = _serious(facts.of(*kinds))
        if not found:
            return None
        where = [f.where for f in found if f.where]
        first = _first(found)
        strongest = max(found, key=lambda f: Severity.rank(f.severity))
        places = f" in {layer_span(where)}" if where else ""
        return Found(
            f"{what}{places} from step {first}",
            first,
            sorted(set(where), key=_natural),
            {
                "findings": len(found),
                "first": found[0].evidence,
                "steps": [f.step for f in found[:20]],
            },
            strongest.severity,
        )

    return check


# -- the checks ---------------------------------------------------------------------------------


def _attention_growth(facts: RunFacts) -> Found | None:
    """Attention logits that grew (see :class:`AttentionLogitGrowth`). When every finding was
    the detector's early warning (growth that looked compounding, still under the threshold)
    and, in a run that did not break, each layer's logits stayed under the threshold to the
    end and had stopped compounding there (the last reading under ``EARLY_RATIO`` times the
    one a cadence before it, a cadence or more after the warning), it is info: a burst of
    learning out of a small start that slowed, which the early test cannot yet tell from
    growth that compounds."""
    found = _located((ATTENTION_LOGIT_GROWTH,), "attention-logit growth")(facts)
    if found is None or found.severity != "warning":
        return found
    if _grown_everywhere(found, facts, found.first_step, "the attention logits"):
        return found
    warned = [f for f in facts.of(ATTENTION_LOGIT_GROWTH) if f.severity != "info"]
    thrown = _thrown_by_a_raise(facts, warned[0]) if warned else ""
    if thrown:
        found.consequence_of = thrown
        return found
    peaks = [_below_an_earlier_peak(facts, f) for f in warned]
    if warned and all(p is not None for p in peaks):
        found.severity = "info"
        step, peak = min(p for p in peaks if p is not None)
        found.evidence["earlier_peak"] = {"step": step, "attn_logit_max": peak}
        found.summary += (
            f": the logits had stood as high at step {step} ({peak:.3g}) and rose no further "
            "until the run was jolted, a level held since, not growth"
        )
        return found
    held = [_held_level(facts, f) for f in warned]
    if warned and all(h is not None for h in held):
        found.severity = "info"
        found.evidence["held_level_until"] = max(h for h in held if h is not None)
        broke, best = facts.broke_at, _best_before_trouble(facts)
        found.summary += (
            ": the logits held level from the warning "
            + (f"to the break at step {broke}" if broke is not None else "to the end")
            + f", while the loss kept improving (to step {best}): a level the model learnt at, "
            + ("not what broke the run" if broke is not None else "not growth")
        )
        return found
    if facts.broke_at is not None:
        return found
    if not all(f.evidence.get("early") and f.where for f in warned):
        return found
    if all(_stopped_short(facts, f) for f in warned):
        found.severity = "info"
        found.summary += (
            ": the growth slowed and stopped short of the threshold by the end, a burst of "
            "learning rather than logits compounding"
        )
        found.evidence["stopped_short"] = True
    return found


def _thrown_by_a_raise(facts: RunFacts, f: Finding) -> str:
    """Why the attention logits of the first warning ``f`` grew, when a raise of the learning
    rate at a stroke that passed (a glitch put back, a warm restart the loss came back from:
    :func:`_a_passing_raise`) came at or after the reading the layer's rise to ``f`` began from
    (each reading since above the one before): the raised steps threw them ('' otherwise)."""
    series = _layer_logits(facts, f)
    if series is None:
        return ""
    steps, values = series
    i = int(np.searchsorted(steps, f.step, side="right")) - 1
    if i < 1 or steps[i] != f.step:
        return ""
    while i > 0 and values[i] > values[i - 1]:
        i -= 1
    before = int(steps[i])
    if before >= f.step:
        return ""
    raised = _raised_before(facts, f.step, within=f.step - before)
    if raised is None:
        return ""
    # most of the rise came after it: at the last reading up to it, half the logit or less
    at = values[: int(np.searchsorted(steps, raised, side="right"))]
    level = float(at[-1]) if len(at) else math.nan
    if not level <= 0.5 * float(values[steps == f.step][0]):
        return ""
    passed = _a_passing_raise(facts, raised, f.step)
    if not passed:
        return ""
    return (
        f"the logits stood at {level:.3g} when the learning rate was raised 4x or more at a "
        f"stroke at step {raised}, and {passed}: its steps threw them"
    )


def _layer_logits(facts: RunFacts, f: Finding) -> tuple[np.ndarray, np.ndarray] | None:
    """The largest attention logit's series of the layer of the finding ``f``, if recorded."""
    return facts.series(f"{ATTN_LOGIT_MAX.name}/{f.where}") if f.where else None


def _below_an_earlier_peak(facts: RunFacts, f: Finding) -> tuple[int, float] | None:
    """(step, value) of an earlier reading of the layer of the warning ``f``, before the
    reading ``f`` compared with, as high as the logit ``f`` fired at (within ``EARLY_RATIO``,
    the rise the detector itself counts as growth), when the layer
    never rose past ``EARLY_RATIO`` times that peak from then until a burst of the learning
    rate jolted the run (or to its end): the detector saw a rise within a level the layer
    had reached and held (a dip and a recovery), not growth."""
    series = _layer_logits(facts, f)
    before, value = f.evidence.get(PREVIOUS_READING), f.evidence.get(ATTN_LOGIT_MAX.name)
    if series is None or not isinstance(before, int) or not isinstance(value, (int, float)):
        return None
    steps, values = series
    earlier = (steps < before) & np.isfinite(values)
    # as high by the detector's own measure: a rise under EARLY_RATIO is none
    if not earlier.any() or values[earlier].max() * AttentionLogitGrowth.EARLY_RATIO < value:
        return None
    k = int(np.argmax(np.where(earlier, values, -np.inf)))
    peak = float(values[k])
    jolts = [b[0] for b in _rate_bursts(facts) if b[0] > f.step]
    until = min(jolts) if jolts else math.inf
    after = (steps > steps[k]) & (steps < until)
    if not np.isfinite(values[after]).all():
        return None
    if values[after].max(initial=0.0) > AttentionLogitGrowth.EARLY_RATIO * peak:
        return None
    return int(steps[k]), peak


# Readings, a cadence apart or more, over which attention logits held level before a break.
HELD_READINGS = 3


def _best_before_trouble(facts: RunFacts) -> int | None:
    """The step of the best sustained loss before the run broke, or of the whole run."""
    return facts.progress_until if facts.broke_at is not None else facts.best_loss_step


def _held_level(facts: RunFacts, f: Finding) -> int | None:
    """The step of the last reading before the break (or the run's end) when the layer of the
    warning ``f`` reached its level by its second reading and held it from there on
    (``HELD_READINGS`` readings or more, over a cadence or more past ``f``, each within
    ``EARLY_RATIO`` of the others) while the loss set new bests ``PROGRESS_AFTER`` steps or
    more after ``f``: the logits' scale settling in the first steps (an architecture's own),
    then the model learning at that level, is no growth, and explains no break that came
    later. Logits that grew over many readings and only slowed near the end do not hold."""
    series = _layer_logits(facts, f)
    before, best = f.evidence.get(PREVIOUS_READING), _best_before_trouble(facts)
    if series is None or best is None or best - f.step < PROGRESS_AFTER:
        return None
    steps, values = series
    end = facts.broke_at if facts.broke_at is not None else math.inf
    span = (steps >= steps[min(1, len(steps) - 1)]) & (steps < end)
    level = values[span]
    if len(level) < HELD_READINGS or not np.isfinite(level).all() or level.min() <= 0:
        return None
    cadence = f.step - before if isinstance(before, int) and before < f.step else 1
    if steps[span][-1] - f.step < cadence:
        return None
    if level.max() > AttentionLogitGrowth.EARLY_RATIO * level.min():
        return None
    return int(steps[span][-1])


def _stopped_short(facts: RunFacts, f: Finding) -> bool:
    """Whether the layer of an early warning ``f`` kept its largest logit under the
    detector's threshold to the end, with its last reading, a cadence or more after ``f``,
    under ``EARLY_RATIO`` times the reading a cadence before it."""
    series = _layer_logits(facts, f)
    before, threshold = f.evidence.get(PREVIOUS_READING), f.evidence.get("threshold")
    if series is None or not isinstance(before, int) or not threshold or before >= f.step:
        return False
    cadence = f.step - before
    steps, values = series
    after = (steps > f.step) & np.isfinite(values)
    if not after.any() or values[after].max() >= threshold or steps[-1] < f.step + cadence:
        return False
    earlier = values[(steps <= steps[-1] - cadence) & np.isfinite(values)]
    return bool(len(earlier)) and values[-1] < AttentionLogitGrowth.EARLY_RATIO * earlier[-1]


def _scaled_head(facts: RunFacts, found: Found | None) -> Found | None:
    """``found`` with the output layer named after a parameter it names that scales the
    logits no module produced (CLIP's ``logit_scale`` times a cosine head's output): the
    scale is where the logits' size is set, the layer is where they are made."""
    layer = facts.output_layer
    if found is None or layer is None or layer in found.where:
        return found
    if any(PARAM_NORM.key(w) in facts.names for w in found.where):
        found.where = found.where + [layer]
    return found


def _softmax_collapse(facts: RunFacts) -> Found | None:
    """Collapsed rows, found on a streak of readings, dated from the first of an unbroken run of
    readings with rows collapsed that led into it: logits inflated at initialisation (a
    temperature applied the wrong way) collapse rows from the first step, a few at first, and
    the log-partition drift they make is then the collapse's, not a cause of its own."""
    found = _scaled_head(facts, _located((SOFTMAX_COLLAPSE_KIND,), "softmax collapse")(facts))
    series = facts.series(SOFTMAX_COLLAPSE.name)
    if found is None or series is None or found.first_step is None:
        return found
    steps, values = series
    clear = steps[(steps <= found.first_step) & ~(values > 0)]  # readings with none collapsed
    since = steps[steps > clear.max()] if len(clear) else steps
    if len(since) and since[0] < found.first_step:
        found.evidence["rows_collapsed_since"] = int(since[0])
        found.first_step = int(since[0])
        found.summary += f" (rows collapsed at every reading since step {since[0]})"
    scaled = _scaled_from_the_start(facts, steps, found.first_step)
    if scaled is not None:
        began, scale = scaled
        found.evidence["scaled_from"] = began
        found.first_step = began
        found.summary += (
            f"; the logits are their layer's output times {scale:.3g}, a fixed number from "
            f"step {began} (a temperature applied the wrong way): rows collapsed from the "
            "first reading with it"
        )
        return found
    spike = _thrown_by_a_spike(facts, found.first_step, clear.max() if len(clear) else None)
    burst = _burst_before(facts, found.first_step)
    climb = (
        _transient_around(facts, found.first_step, int(clear.max()), SOFTMAX_COLLAPSE_KIND)
        if len(clear)
        else None
    )
    if climb is not None:
        found.consequence_of = (
            f"no row had collapsed at step {int(clear.max())}, before the climb of step {climb}, "
            "which the run came all the way back from, and rows collapsed from the reading "
            "after: the climb threw the logits"
        )
    elif spike is not None:
        found.consequence_of = (
            f"no row had collapsed until the gradient spike at step {spike}, and rows "
            f"collapsed from the step after: its update threw the logits"
        )
    elif burst is not None and len(clear) and clear.max() <= burst[0] < found.first_step:
        found.consequence_of = (
            f"no row had collapsed until {_burst_said(burst)}, and rows collapsed from step "
            f"{found.first_step}: the burst's updates threw the logits"
        )
    driven = _logits_driven_by_the_head_rate(facts)
    head = driven.where[0] if driven is not None else None
    if head and not found.consequence_of and any(_inside(w, head) for w in found.where):
        found.consequence_of = (
            f"{head} trains {driven.evidence['rate_times']:.3g}x faster than the rest "
            "of the model and its logits grew with that rate: rows collapse as they grow"
        )
    amplified = _amplified_into_the_head(facts, clear)
    if not found.consequence_of and amplified is not None:
        found.consequence_of = (
            f"{amplified.summary}: the head's inputs were as large, so were its logits, and "
            "rows collapsed from the first reading"
        )
    fell = _fell_without_bound(facts) if not found.consequence_of else None
    if fell is not None and fell.first_step <= found.first_step:
        found.consequence_of = (
            f"the loss fell below zero without bound from step {fell.first_step}, the output "
            "layer growing to lower it: rows collapse as its logits grow"
        )
    cut_off = _cut_off_from_its_input(facts, found.first_step) if not found.consequence_of else None
    if cut_off is not None:
        found.consequence_of = (
            f"{cut_off.evidence.get('dead_units', math.nan):.0%} of {cut_off.where}'s units "
            f"were dead by step {cut_off.step} and the loss never went below where it began: "
            "the head's output no longer depends on its input, and the rows that round to "
            "one-hot are those of the class its one answer names"
        )
    pushed, _ = _pushes(facts)
    if not found.consequence_of and len(pushed) and pushed[0] <= found.first_step:
        # no loss of the softmax alone moves the logits' common shift: a term that does (a
        # z-loss of the wrong sign, nll_loss on raw scores) grows the logits the rows round on
        found.consequence_of = (
            f"the loss's own gradient pushed every logit up from step {pushed[0]}, a push no "
            "loss of the softmax alone makes: the logits it grew spread until rows rounded"
        )
    receded = _collapse_receded(facts, steps, values, found.first_step)
    if receded is not None:
        found.severity = "info"
        found.evidence["receded_from"] = receded
        found.summary += (
            f"; it receded from step {receded} to the end with the logits no longer growing: "
            "a fit that stopped pushing its margins, not a stall"
        )
    return found


# A loss whose median stands at this share of its first value or above has learnt nothing (a
# first loss is often a little above chance, ln(classes), which a constant answer reaches).
UNLEARNT = 0.9


def _cut_off_from_its_input(facts: RunFacts, began: int) -> Finding | None:
    """The first dead-units warning at or before ``began`` (a collapse found then), when the
    loss from ``began`` on stood at ``UNLEARNT`` of its first value or above (the median of what
    followed): a model whose units died answers one thing whatever it is shown, and that
    answer, pushed to one-hot by the same steps that killed them, collapses the rows of its
    class. A softmax collapse proper comes of a fit (rows right and ever more confident): the
    loss falls."""
    dead = [
        f
        for f in facts.of(LOSS_OF_PLASTICITY)
        if f.severity != "info" and f.where and f.step <= began and "dead_units" in f.evidence
    ]
    loss = facts.series(LOSS.name)
    if not dead or loss is None or not len(loss[1]) or not np.isfinite(loss[1][0]):
        return None
    after = loss[1][(loss[0] >= began) & np.isfinite(loss[1])]
    return dead[0] if len(after) and np.median(after) >= UNLEARNT * loss[1][0] else None


def _amplified_into_the_head(facts: RunFacts, clear: np.ndarray) -> Found | None:
    """The signal amplified from the first step (:func:`_exploded_from_the_start`; through
    time only where the recurrent state itself grew large), when no collapse reading before the
    collapse found was clear of collapsed rows: the rows collapsed on logits that were large
    from the start, made by the layers before the head."""
    if len(clear):
        return None
    born = _exploded_from_the_start(facts)
    if born is None or born.first_step is None:
        return None
    through_time = [w for w in born.where if any(_inside(w, m) for m in facts.recurrent_modules)]
    if through_time and not all(_state_amplified(facts, w, born.first_step) for w in through_time):
        return None  # a bounded state (tanh, an LSTM's gates) hands the head no large inputs
    return born


# A recurrent module's output at the first step this many times the RMS of the model's input:
# a state the recurrence amplified (a ReLU recurrence with a gain above 1), not one a bounded
# activation holds within +-1.
STATE_AMPLIFIED = 10.0


def _state_amplified(facts: RunFacts, module: str, step: int) -> bool:
    """Whether the recurrent ``module``'s output RMS at ``step`` stood ``STATE_AMPLIFIED``
    times the model input's RMS or more."""
    inputs, state = facts.series(INPUT_RMS.name), facts.series(ACT_RMS.key(module))
    if inputs is None or state is None:
        return False
    scale, act = inputs[1][inputs[0] == step], state[1][state[0] == step]
    return bool(len(scale) and len(act) and scale[0] > 0 and act[0] >= STATE_AMPLIFIED * scale[0])


# A fixed number the logits are multiplied by after their layer at least this large is a
# temperature applied the wrong way (logits / 0.02): the contrastive defaults stay under it
# (1 / 0.07 = 14.3), a cosine head's scale of 30-64 saturates its softmax as it fits.
FIXED_TEMPERATURE = 20.0


def _scaled_from_the_start(
    facts: RunFacts, steps: np.ndarray, began: int
) -> tuple[int, float] | None:
    """The first reading of the logits' scale (``output_scale``) at ``FIXED_TEMPERATURE`` or
    more, and that scale, when it held within 1% of it at every reading up to ``began`` (a
    collapse found then), and no collapse reading (``steps``) fell between the two; and it was
    there from the first reading, or came at a stroke (:func:`_scaled_at_a_stroke`). The
    collapse began with the number, not where the cadence first read it."""
    scales = facts.series(OUTPUT_SCALE.name)
    if scales is None or not len(scales[0]):
        return None
    if scales[1][0] >= FIXED_TEMPERATURE:
        first, scale = int(scales[0][0]), float(scales[1][0])
    elif (stroke := _scaled_at_a_stroke(facts, began)) is not None:
        _, first, scale = stroke
    else:
        return None
    held = scales[1][(scales[0] >= first) & (scales[0] <= began)]
    if not first <= began or not (np.abs(held - scale) <= 0.01 * scale).all():
        return None
    between = steps[(steps > first) & (steps < began)]
    return (first, scale) if not len(between) else None


def _scaled_at_a_stroke(facts: RunFacts, began: int) -> tuple[int, int, float] | None:
    """A number multiplying the logits that came at a stroke, by ``began``: the logits' scale
    read under ``FIXED_TEMPERATURE`` and under half what it read next, ``FIXED_TEMPERATURE`` or
    more, and held within 1% at every reading since up to ``began`` (a temperature read from a
    config in the wrong unit mid-run; a learnt scale grows, and a schedule's anneals, reading
    by reading). The last reading without it, the first with it, and the number."""
    scales = facts.series(OUTPUT_SCALE.name)
    if scales is None:
        return None
    steps, values = scales
    for i in range(1, len(steps)):
        if steps[i] > began:
            break
        before, scale = values[i - 1], values[i]
        if before < FIXED_TEMPERATURE <= scale and before < scale / 2:
            held = values[i : np.searchsorted(steps, began, side="right")]
            if (np.abs(held - scale) <= 0.01 * scale).all():
                return int(steps[i - 1]), int(steps[i]), float(scale)
    return None


# Readings at the end of a run that must all be under the detector's fraction for a collapse
# to count as over: the detector's own patience.
RECEDED_READINGS = 3


def _collapse_receded(
    facts: RunFacts, steps: np.ndarray, values: np.ndarray, began: int
) -> int | None:
    """The step from which a collapse stayed under its detector's fraction to the end of a run
    that did not break, when its last ``RECEDED_READINGS`` readings were all under it and the
    log-partition ended no higher than where the collapse began. Collapse stalls a run by
    growing its logits without end (naive loss minimisation); a confident fit after a rate
    drop, or a fixed token every caption shares, collapses rows for a while and lets go."""
    bar = _collapse_bar(facts)
    after = steps > began
    tail = values[after][-RECEDED_READINGS:]
    if facts.broke_at is not None or len(tail) < RECEDED_READINGS or not (tail < bar).all():
        return None
    lse = facts.series(LOGIT_LSE_MEAN.name)
    if lse is not None:
        at = lse[1][(lse[0] <= began) & np.isfinite(lse[1])]
        if not len(at) or not np.isfinite(lse[1][-1]) or lse[1][-1] > at[-1]:
            return None
    above = steps[after & (values >= bar)]
    return int(steps[steps > above.max()][0]) if len(above) else int(steps[after][0])


def _collapse_bar(facts: RunFacts) -> float:
    """The share of rows collapsed at which the run's collapse detector fired."""
    found = facts.of(SOFTMAX_COLLAPSE_KIND)
    return found[0].evidence.get("fraction", COLLAPSED_SHARE) if found else COLLAPSED_SHARE


# Steps after a gradient spike within which what first shows is what its update threw.
THROWN_WITHIN = 2


def _transient_around(
    facts: RunFacts,
    step: int,
    clear: int | None = None,
    kind: FindingKind = OUTPUT_LOGIT_DIVERGENCE,
) -> int | None:
    """The step of a critical climb of the loss within ``THROWN_WITHIN`` steps of ``step``, or
    after ``clear`` (the reading before, where nothing was found) and by ``step``, that the run
    came all the way back from (see :meth:`RunFacts.came_back_from`), when every warning of
    ``kind`` came within ``CONFIRMED_SOON`` steps of it: what was read during a transient is
    the transient's."""
    climbs = [
        f.step
        for f in facts.of(LOSS_DIVERGENCE)
        if f.severity == "critical"
        and (abs(f.step - step) <= THROWN_WITHIN or (clear is not None and clear < f.step <= step))
    ]
    if not climbs or not facts.came_back_from(climbs[0]):
        return None
    warned = [f.step for f in facts.of(kind) if f.severity != "info"]
    if any(abs(s - climbs[0]) > CONFIRMED_SOON for s in warned):
        return None
    return climbs[0]


# Records the growth detector asks of a growth before it finds it (``GradientGrowth``'s
# ``patience``): one found this soon after a reading is one that began by it.
GROWTH_PATIENCE = 3


# A gradient norm at the step after a spike this many times below it: the spike was one step's
# (one batch, a loss scaled once), not a growth passing through (an explosion's gradients go on
# rising after its first spike).
ONE_STEP_FALL = 10.0


def _thrown_by_a_one_step_spike(
    facts: RunFacts, growth: Finding
) -> tuple[int, float, float] | None:
    """(the spike's step, its gradient norm before clipping, the next step's) when gradient
    growth was first found (``growth``) within :meth:`RunFacts.spike_carried` steps after a
    gradient spike (not info) whose next gradient fell ``ONE_STEP_FALL`` times or more below
    it, and the growth's level stood that far below the spike too: the growth read is that
    spike's update, carried on by momentum, not gradients growing."""
    spikes = _spikes_between(facts, growth.step - facts.spike_carried, growth.step)
    grads = facts.grad_norm_made
    if not spikes or grads is None:
        return None
    spike = min(spikes)
    at, after = grads[1][grads[0] == spike], grads[1][grads[0] == spike + 1]
    level = growth.evidence.get("grad_norm_median", math.inf)
    if not len(at) or not len(after) or not np.isfinite(at[0]):
        return None
    size, next_one = float(at[0]), float(after[0])
    if not (next_one * ONE_STEP_FALL <= size and level * ONE_STEP_FALL <= size):
        return None
    return spike, size, next_one


def _thrown_by_a_spike(facts: RunFacts, began: int, clear: int | None) -> int | None:
    """The step of a gradient spike (not info) within ``THROWN_WITHIN`` steps before ``began``
    (where a mechanism was first read), when the reading before (``clear``: none found there)
    came before it: the spike's update made what was read next."""
    spikes = _spikes_between(facts, began - THROWN_WITHIN, began)
    if spikes and (clear is None or clear <= min(spikes)):
        return min(spikes)
    return None


def _spikes_between(facts: RunFacts, start: int, stop: int) -> list[int]:
    """The steps of the gradient spikes (not info) from ``start`` up to, not at, ``stop``."""
    return [
        f.step
        for f in facts.of(GRAD_NORM_SPIKE, GRADIENT_SPIKE)
        if f.severity != "info" and start <= f.step < stop
    ]


# The climb of the logits, per step, from their last reading before a spike to the finding,
# at least this many times its pace over the readings before: it quickened at the spike.
QUICKENED = 5.0


def _quickened_by_a_spike(facts: RunFacts, began: int) -> tuple[int, int] | None:
    """(the spike, the logits' last reading before it) when a gradient spike (not info) came
    within :meth:`RunFacts.spike_carried` steps before the output-logit finding at ``began``,
    and the log-partition climbed from its last reading before the spike to the finding's
    ``QUICKENED`` times faster per step than over the two readings before that: an optimizer
    with momentum goes on moving the weights along a spike's gradient for steps after it, and
    a climb that quickened just then is that spike's throw, not the drift that was going on."""
    lse = facts.series(LOGIT_LSE_MEAN.name)
    spikes = _spikes_between(facts, began - facts.spike_carried, began)
    if lse is None or not spikes:
        return None
    finite = np.isfinite(lse[1])
    steps, values = lse[0][finite], lse[1][finite]
    spike = min(spikes)
    before, at = np.flatnonzero(steps <= spike), np.flatnonzero(steps == began)
    if len(before) < 2 or not len(at):
        return None
    (s0, s1), (v0, v1) = steps[before[-2:]], values[before[-2:]]
    pace = max((v1 - v0) / (s1 - s0), 0.0)
    climb = (values[at[0]] - v1) / (began - s1)
    if not climb > 0 or climb < QUICKENED * pace:
        return None
    return spike, int(s1)


def _risen_at_a_spike(facts: RunFacts, began: int, before: int) -> tuple[int, int] | None:
    """(the spike, the logits' last reading before it) when the reading before the output-logit
    finding at ``began`` (``before``) was the first after a gradient spike (not info) within
    ``THROWN_WITHIN`` steps before ``began``, and the log-partition stood there half or more of
    the way up from its reading before the spike to the finding's: read just after the spike's
    update, under the detector's bar but already up, the logits had been thrown by it."""
    lse = facts.series(LOGIT_LSE_MEAN.name)
    spikes = _spikes_between(facts, began - THROWN_WITHIN, before)
    if lse is None or not spikes:
        return None
    steps, values = lse
    spike = min(spikes)
    earlier = np.flatnonzero((steps <= spike) & np.isfinite(values))
    after = np.flatnonzero((steps > spike) & (steps <= before))
    at_found = values[steps == began]
    if not len(earlier) or len(after) != 1 or steps[after[0]] != before or not len(at_found):
        return None  # not the first reading after the spike, or nothing read before it
    low, mid, high = values[earlier[-1]], values[after[0]], at_found[0]
    if not (high > low and mid - low >= 0.5 * (high - low)):
        return None
    return spike, int(steps[earlier[-1]])


def _update_ratio(facts: RunFacts) -> Found | None:
    """Updates out of range; a layer that is only frozen stalls learning, it does not make a
    loss climb. Frozen tensors whose gradient was exactly 0, after dead units were found, are
    the dead units' doing (no gradient reaches them), not a frozen layer's."""
    found = _located((UPDATE_RATIO_OUT_OF_RANGE,), "update-to-weight ratio out of range")(facts)
    scheduled = _frozen_by_the_schedule(facts, found)
    if scheduled is not None:
        return scheduled
    if found is None or found.severity == "info":  # none, or dead code and the like
        return _rate_set_apart(facts) or _too_small_to_learn(facts) or found
    directions = {f.evidence.get("direction") for f in facts.of(UPDATE_RATIO_OUT_OF_RANGE)}
    found.stalls = "too_large" not in directions
    ratios = [f for f in facts.of(UPDATE_RATIO_OUT_OF_RANGE) if f.severity != "info"]
    large = [f.where for f in ratios if f.where and _too_large(f)]
    if large and len(large) == len(ratios):  # every one too large: their module's growth first
        found.drives = _driven_mechanism(facts, large)
    if ratios and all(_paused(facts, f) for f in ratios):
        return None  # experts no token was routed to for a while, then learning again
    back = _back_in_range(facts, ratios)
    if back is not None and found.first_step is not None:
        # updates too large for a while, then in range for good: an episode the run got over
        found.evidence[BACK_WITHIN] = back - found.first_step
    # A tensor no gradient reaches stands still whatever its learning rate: when dead units
    # were found before and every frozen tensor's gradient was exactly 0, they cut it off
    dead = [f for f in facts.of(LOSS_OF_PLASTICITY) if f.severity != "info" and f.where]
    dead = [f for f in dead if found.first_step is not None and f.step <= found.first_step]
    if dead and found.stalls and all(_no_gradient(facts, f.where, f.step) for f in ratios):
        found.consequence_of = (
            f"no gradient reached {layer_span([f.where for f in ratios if f.where])} (exactly 0 "
            f"before step {found.first_step}): the dead units of {dead[0].where}, found at step "
            f"{dead[0].step}, cut it off"
        )
    elif dead and found.stalls and all(_died_before(f, dead) for f in ratios):
        # or their own layer died first: what moved it had already killed most of its units
        # (a first step far too large), and the few left alive are no layer to train
        died = next(d for d in dead if _died_before(ratios[0], [d]))
        found.consequence_of = (
            f"{layer_span([f.where for f in ratios if f.where])} stood still from step "
            f"{found.first_step}, after its own layer lost its units ({died.where}: "
            f"{died.evidence.get('dead_units', math.nan):.0%} dead at step {died.step})"
        )
    elif found.stalls and not dead and (starved := _starved(facts)) is not None:
        found.consequence_of = (
            f"no input reached {layer_span(starved.where)} after step {starved.first_step}: "
            "they stand still because nothing runs through them"
        )
    return found


def _frozen_by_the_schedule(facts: RunFacts, found: Found | None) -> Found | None:
    """Layers frozen only once a schedule had cut every group's learning rate ``SCHEDULE_CUT``
    times (each frozen finding the detector's ``rate_cut`` info, or a frozen reading after such
    cuts): info when the loss had settled before the cuts (see
    :func:`_levels_around_the_cuts`), a run the schedule let settle; a warning when it was
    still improving, a schedule that stopped the learning early (ReduceLROnPlateau in mode
    'max' on a loss, a decay stepped every batch). None when no schedule froze them."""
    ratios = [f for f in facts.of(UPDATE_RATIO_OUT_OF_RANGE) if f.severity != "info"]
    cut = [f for f in facts.of(UPDATE_RATIO_OUT_OF_RANGE) if f.evidence.get("rate_cut")]
    if found is None or found.first_step is None or not (cut or ratios):
        return None
    if ratios and any(f.evidence.get("direction") != "frozen" for f in ratios):
        return None
    levels = _levels_around_the_cuts(facts, min(f.step for f in cut or ratios))
    if levels is None:
        return None
    times, level, last = levels
    found.stalls = True
    found.evidence["rate_cut"] = times
    found.where = sorted({f.where for f in cut or ratios if f.where}, key=_natural)
    if last >= KEPT_LEVEL * level:
        found.severity = "info"
        found.summary += (
            f": the schedule had cut the learning rate {times:.3g}x, step by step, and the loss "
            f"ended near where it had settled before the cuts ({last:.4g} over the last fifth, "
            f"{level:.4g} while the rate was within 10x of its peak): a run the schedule let "
            "settle, not a layer kept from learning"
        )
    else:
        found.severity = "warning"
        found.summary += (
            f": the schedule cut the learning rate {times:.3g}x, step by step, while the loss "
            f"was still improving ({level:.4g} while the rate was within 10x of its peak, "
            f"{last:.4g} over the last fifth): it froze the layers before the run had learnt "
            "(ReduceLROnPlateau in mode 'max' on a loss, a decay stepped every batch?)"
        )
    return found


# A schedule that cut every group's learning rate this many times from its peak, in at least
# RATE_CUTS drops, before updates read frozen; the loss over the last fifth of the run at this
# share or more of its level while the rate stood within 10x of its peak: the cuts bought little
# more than the quieter steps of a smaller rate, so they came because the loss had settled
# (ReduceLROnPlateau's way), not while it was still learning.
SCHEDULE_CUT, RATE_CUTS, KEPT_LEVEL = 100.0, 3, 0.75


def _levels_around_the_cuts(facts: RunFacts, step: int) -> tuple[float, float, float] | None:
    """(how many times the rate was cut, the loss's median while every rate was within 10x of
    its peak, past the run's first tenth; its median over the run's last fifth) when by
    ``step`` a schedule had cut every group's learning rate ``SCHEDULE_CUT`` times or more from
    its peak in ``RATE_CUTS`` drops or more; None otherwise."""
    loss = facts.series(LOSS.name)
    if loss is None or not facts.learning_rates:
        return None
    cuts, high_until = [], step
    for steps, rates in facts.learning_rates:
        ok = np.isfinite(rates) & (rates > 0) & (steps <= step)
        if ok.sum() < 2:
            return None
        peak, now = float(rates[ok].max()), float(rates[ok][-1])
        drops = int(np.sum(np.diff(rates[ok]) < 0))
        if now * SCHEDULE_CUT > peak or drops < RATE_CUTS:
            return None
        cuts.append(peak / now)
        below = steps[ok][rates[ok] * 10 < peak]
        high_until = min(high_until, int(below[0]))
    steps, values = loss
    finite = np.isfinite(values)
    start = int(steps[0]) + (int(steps[-1]) - int(steps[0])) // 10
    before = values[finite & (steps >= start) & (steps < high_until)]
    last = values[finite][-(len(values[finite]) // 5) :]
    if len(before) < 10 or len(last) < 10:
        return None
    level, end = float(np.median(before)), float(np.median(last))
    return min(cuts), level, end


# Updates under this share of every tensor's norm per step (its median over the run) move a
# weight of 0.02 by 2e-7: too little to learn in any run's length (healthy steps are 1e-4 to
# 1e-2 of the weights). NO_PROGRESS: the loss over the last fifth of the run at this share of
# its level over the first tenth or more.
TINY_STEPS, NO_PROGRESS = 1e-5, 0.95


def _too_small_to_learn(facts: RunFacts) -> Found | None:
    """Every tensor's update ratio stayed under ``TINY_STEPS`` (its median over the run) and
    the loss did not fall (``NO_PROGRESS``), in a run that did not break: a learning rate
    orders of magnitude too small (a unit or an exponent typed wrong), under what the
    update-ratio detector's per-record test calls frozen only for float32's last bits."""
    ratios = facts.run.family(UPDATE_RATIO.name)
    loss = facts.series(LOSS.name)
    if not ratios or loss is None or facts.broke_at is not None:
        return None
    medians = {n: float(np.nanmedian(v)) for n, (_, v) in ratios.items() if np.isfinite(v).any()}
    values = loss[1][np.isfinite(loss[1])]
    if not medians or len(values) < 20 or max(medians.values()) >= TINY_STEPS:
        return None
    first, last = values[: len(values) // 10].mean(), values[-(len(values) // 5) :].mean()
    if not (first > 0 and last >= NO_PROGRESS * first):
        return None
    typical = float(np.median(list(medians.values())))
    return Found(
        f"every update moved its weights by under {TINY_STEPS:g} of their norm (a median "
        f"{typical:.2g}) and the loss did not fall ({first:.4g} over the first tenth of the "
        f"run, {last:.4g} over the last fifth): a learning rate too small to train at, "
        "a unit or an exponent typed wrong?",
        0,
        sorted(medians, key=_natural),
        {"median_update_ratio": typical, "loss_first": float(first), "loss_last": float(last)},
        stalls=True,
    )


# Learning rates of two optimizer groups this many times apart: further than a layer-wise decay
# sets neighbouring groups (0.65-0.9 each) or LoRA+ sets its two (16x); an exponent typed one or
# two places off, or a multiplier meant the other way round, sets them 100x or more apart.
RATES_APART = 30.0
TYPO = "a rate typed with the wrong exponent, or a multiplier meant the other way round?"


def _rates_set_apart(facts: RunFacts) -> bool:
    """Whether two optimizer groups' median learning rates stand ``RATES_APART`` times apart or
    more (whichever parameters they hold)."""
    rates = [
        float(np.median(values[np.isfinite(values) & (values > 0)]))
        for _, values in facts.learning_rates
        if (np.isfinite(values) & (values > 0)).any()
    ]
    return len(rates) > 1 and max(rates) >= RATES_APART * min(rates)


def _group_rates(facts: RunFacts, members: dict[str, list[str]]) -> dict[str, float]:
    """Each optimizer group's median learning rate over the run (its positive, finite readings),
    by its series key, for the groups that hold parameters and were read."""
    rates: dict[str, float] = {}
    for key, names in members.items():
        series = facts.series(key)
        if names and series is not None:
            values = series[1][_positive(series[1])]
            if len(values):
                rates[key] = float(np.median(values))
    return rates


def _rate_set_apart(facts: RunFacts) -> Found | None:
    """An optimizer group whose learning rate (its median over the run; a rate of 0, frozen on
    purpose, left out) stands ``RATES_APART`` times or more from every other group's, in a run
    whose update ratios stayed in range (or were judged harmless): a rate typed with the wrong
    exponent, a multiplier meant the other way. When every group stands alone (two groups),
    :func:`_the_body` says which is at the rate meant. Info: a new head meant to learn 100x
    faster than a pretrained body reads the same; a warning when the run broke with gradients
    growing in that (faster) group's tensors alone."""
    members = facts.run.config.get(PARAM_GROUPS) or {}
    rates = _group_rates(facts, members)
    if len(rates) < 2:
        return None

    def apart(key: str, other: str) -> float:
        return max(rates[key] / rates[other], rates[other] / rates[key])

    alone = [k for k in rates if min(apart(k, o) for o in rates if o != k) >= RATES_APART]
    if len(alone) == len(rates):
        alone.remove(_the_body(facts, members, alone, rates))
    if not alone:
        return _rates_laddered(facts, members, rates)
    rest = [k for k in rates if k not in alone]
    body = float(np.median([rates[k] for k in rest]))
    key = max(alone, key=lambda k: abs(math.log(rates[k] / body)))  # the furthest from the rest
    rate, names = rates[key], members[key]
    where = _modules_of(names)
    faster = rate > body
    summary = (
        f"the optimizer group {key} ({layer_span(where)}) trains at learning rate {rate:.3g}, "
        f"{max(rate / body, body / rate):.3g}x {'above' if faster else 'below'} the {body:.3g} "
        "of the rest"
    )
    moved = {
        side: _median_update_ratio(facts, group)
        for side, group in (("group", names), ("rest", _other_members(members, key)))
    }
    if moved["group"] is not None and moved["rest"] is not None:
        summary += (
            f"; its weights moved a median {moved['group']:.3g} of their norm per update, "
            f"against {moved['rest']:.3g} for the rest"
        )
    steps = facts.series(key)[0]
    evidence = {"group": key, "lr": rate, "rest_lr": body, "median_update_ratio": moved}
    grew = [f for f in facts.of(GRADIENT_GROWTH) if f.severity != "info"]
    if faster and facts.broke_at is not None and grew and all(f.where in names for f in grew):
        # the run broke with gradients growing in that group's tensors alone: its rate did it
        summary += (
            f"; the run broke at step {facts.broke_at} with gradients growing in that group "
            f"alone ({layer_span([f.where for f in grew])}): {TYPO}"
        )
        drives = _driven_mechanism(facts, names)
        return Found(summary, int(steps[0]), where, evidence, "warning", drives=drives)
    if faster and _beyond_step_sized_rates(facts, rate, names):
        # however fast a new head is meant to learn, no Adam-like group is run at this rate
        summary += (
            f": {TYPO} {facts.optimizer or 'The optimizer'} moves each weight by about its "
            f"learning rate per step, whatever the gradient: at {rate:.3g} that group's weights "
            "are rewritten within tens of steps"
        )
        drives = _driven_mechanism(facts, names)
        return Found(summary, int(steps[0]), where, evidence, "warning", drives=drives)
    summary += (
        f": {TYPO} If that group is meant to learn this much "
        f"{'faster' if faster else 'slower'} (a new head on a pretrained body), nothing is wrong"
    )
    drives = _driven_mechanism(facts, names) if faster else ""
    return Found(summary, int(steps[0]), where, evidence, "info", drives=drives)


# Neighbouring optimizer groups a layer-wise decay sets 1.1-2x apart (0.5-0.9 a layer); a decay
# typed an order of magnitude off (0.05 for 0.95) sets each this many times or more apart.
LADDER_STEP = 5.0


def _rates_laddered(
    facts: RunFacts, members: dict[str, list[str]], rates: dict[str, float]
) -> Found | None:
    """Three or more optimizer groups, in their order, whose learning rates fall (or rise) from
    each to the next by ``LADDER_STEP`` or more, ``RATES_APART`` or more from end to end: a
    layer-wise decay typed wrong, none of whose groups stands alone. Info (see
    :func:`_rate_set_apart`), naming the groups ``RATES_APART`` or more below the fastest: the
    layers that barely train."""
    # in the groups' order, or in the rates' own (a head's group built first, at the top rate,
    # ahead of the layers its decay runs down from)
    keys = sorted(rates, key=_natural)
    if len(keys) < 3:
        return None
    steps = [rates[b] / rates[a] for a, b in zip(keys, keys[1:], strict=False)]
    falls = all(r <= 1 / LADDER_STEP for r in steps)
    if not (falls or all(r >= LADDER_STEP for r in steps)):
        keys = sorted(rates, key=rates.get, reverse=True)
        steps = [rates[b] / rates[a] for a, b in zip(keys, keys[1:], strict=False)]
        if not all(r <= 1 / LADDER_STEP for r in steps):
            return None
    top = max(rates.values())
    slow = [k for k in keys if top / rates[k] >= RATES_APART]
    if not slow:
        return None
    names = [n for k in slow for n in members[k]]
    where = _modules_of(names)
    factor = math.exp(float(np.mean(np.abs(np.log(steps)))))
    moved = _median_update_ratio(facts, names)
    evidence = {"lr": {k: rates[k] for k in keys}, "step_factor": factor}
    if moved is not None:
        evidence["median_update_ratio"] = moved
    summary = (
        f"the optimizer groups {keys[0]} .. {keys[-1]} train at learning rates "
        f"{rates[keys[0]]:.3g} .. {rates[keys[-1]]:.3g}, about {factor:.3g}x apart from each to "
        f"the next (a layer-wise decay sets neighbours 1.1-2x apart): {layer_span(where)} "
        f"train {top / max(rates[k] for k in slow):.3g}x or more slower than the fastest group"
        + (f", moving a median {moved:.3g} of their weights per update" if moved else "")
        + "; a decay typed wrong (0.05 for 0.95?). If meant, nothing is wrong"
    )
    first = int(facts.series(keys[0])[0][0])
    return Found(summary, first, where, evidence, "info")


def _too_large(f: Finding) -> bool:
    """An update-ratio finding of updates too large for their weights (not too small)."""
    return f.evidence.get("direction") == "too_large"


# Mechanisms whose growth a learning rate set too high for their own module's weights drives:
# the growth is what threatens the run, and is named first.
DRIVEN = (ATTENTION_LOGIT_GROWTH, OUTPUT_LOGIT_DIVERGENCE)


def _driven_mechanism(facts: RunFacts, tensors: list[str]) -> str:
    """The mechanism (see DRIVEN) found, at warning or above, in a module holding one of
    ``tensors`` (those of a group or layer updated too fast), or the output logits that grew
    with their head's rate (see :func:`_logits_driven_by_the_head_rate`): '' when none."""
    for f in facts.of(*DRIVEN):
        if f.severity != "info" and f.where and any(_inside(t, f.where) for t in tensors):
            return f.kind
    driven = _logits_driven_by_the_head_rate(facts)
    if driven is not None and any(_inside(t, driven.where[0]) for t in tensors):
        return OUTPUT_LOGIT_DIVERGENCE
    return ""


# A log-partition this many nats above its first reading grew with its head's rate, where the
# head trains RATES_APART times or more faster than the rest of the model (half the output-logit
# detector's lse_limit: the rise it reads as a drift where no confidence explains it).
DRIVEN_RISE = 10.0


def _logits_driven_by_the_head_rate(facts: RunFacts) -> Found | None:
    """The output logits grew with their head's learning rate: the optimizer group holding the
    output layer trains ``RATES_APART`` times or more faster than every other group, and the
    logits' log-partition rose ``DRIVEN_RISE`` nats or more above its first reading. A head run
    at 30-1000x the body's rate has its weights, and the logits they make, rewritten faster than
    any confidence the loss earns: a classifier's log-partition grows a few nats as it learns,
    not tens. Dated to the first reading that far up."""
    head, members = facts.output_layer, facts.run.config.get(PARAM_GROUPS) or {}
    lse = facts.series(LOGIT_LSE_MEAN.name)
    if head is None or lse is None or len(members) < 2:
        return None
    rates = _group_rates(facts, members)
    holding = [k for k in rates if any(_inside(n, head) for n in members[k])]
    if len(holding) != 1 or len(rates) < 2:
        return None
    key = holding[0]
    times = min(rates[key] / rates[o] for o in rates if o != key)
    steps, values = lse[0][np.isfinite(lse[1])], lse[1][np.isfinite(lse[1])]
    up = np.flatnonzero(values >= values[0] + DRIVEN_RISE) if len(values) else []
    if times < RATES_APART or not len(up):
        return None
    at = int(steps[up[0]])
    # dated from where the climb left its start (a quarter of the way up), as a drift is
    began = int(steps[np.flatnonzero(values >= values[0] + DRIVEN_RISE / 4)[0]])
    return Found(
        f"the logits of {head} grew with its learning rate: their log-partition rose from "
        f"{values[0]:.3g} to {values.max():.3g} (from step {began}; {values[up[0]]:.3g} by step "
        f"{at}) while {head} trained at {times:.3g}x the rate of the rest of the model",
        began,
        [head],
        {"lse_first": float(values[0]), "lse_peak": float(values.max()), "rate_times": times},
    )


# Adam's step (and a sign update's) moves each weight by about the learning rate, whatever the
# gradient's size. The weights of a layer are ~1/sqrt(fan_in) (0.01-0.1): a group run above
# this rate has them rewritten within a few steps. Adam trains layers at 1e-5 to 1e-2 (Kingma
# and Ba's default 1e-3), Lion at a tenth of that. Free parameters are another matter: a
# GFlowNet's log Z is trained at 0.1 (Malkin et al. 2022), a temperature or a codebook fast too.
STEP_SIZED_CEILING = 0.05
STEP_SIZED = ("adam", "sign")  # optimizer families whose step is sized by the rate alone
# So is an adaptive one's (RMSprop, Adagrad: the rate times the gradient over its running
# root-mean-square), but for Adadelta's: its rate scales a ratio of running updates to
# gradients, unit-free, and is 1.0 by default.
UNIT_FREE_RATE = ("Adadelta",)


def _beyond_step_sized_rates(facts: RunFacts, rate: float, names: list[str]) -> bool:
    """Whether ``rate`` is above any an Adam-like optimizer (its step sized by the rate alone)
    trains a layer at, for a group holding a layer's weight (``names`` ending in ``weight``;
    not free parameters such as a log-partition or a codebook)."""
    family = facts.run.config.get(OPTIMIZER_FAMILY)
    sized = family in STEP_SIZED or (family == "adaptive" and facts.optimizer not in UNIT_FREE_RATE)
    return (
        sized and rate > STEP_SIZED_CEILING and any(n.rpartition(".")[2] == "weight" for n in names)
    )


# What a healthy update moves of a weight tensor, as a share of its norm: about 1e-3 (the rule of
# thumb of CS231n's notes, "Neural Networks Part 3": ratios of updates to values near 1e-3).
TYPICAL_UPDATE_RATIO = 1e-3


def _the_body(
    facts: RunFacts, members: dict[str, list[str]], groups: list[str], rates: dict[str, float]
) -> str:
    """Of optimizer groups whose rates all stand apart (two groups), the one at the rate meant:
    not one above any rate an Adam-like optimizer is run at (see STEP_SIZED_CEILING) while
    another is not; else the group whose median update ratio is nearest
    ``TYPICAL_UPDATE_RATIO`` (a rate typed 100x too high or too low moves its weights far more
    or far less than that); without update ratios, the group holding most tensors."""
    usual = [k for k in groups if not _beyond_step_sized_rates(facts, rates[k], members[k])]
    if 0 < len(usual) < len(groups):
        groups = usual
    moved = {k: _median_update_ratio(facts, members[k]) for k in groups}
    if all(v is not None and v > 0 for v in moved.values()):
        return min(groups, key=lambda k: abs(math.log(moved[k] / TYPICAL_UPDATE_RATIO)))
    return max(groups, key=lambda k: len(members[k]))


def _modules_of(parameters: list[str]) -> list[str]:
    """The modules holding ``parameters`` (``fc1.weight`` -> ``fc1``), once each, in order."""
    return list(dict.fromkeys(n.rpartition(".")[0] or n for n in parameters))


def _other_members(members: dict[str, list[str]], key: str) -> list[str]:
    return [n for k, names in members.items() if k != key for n in names]


def _median_update_ratio(facts: RunFacts, names: list[str]) -> float | None:
    """The median of the finite update ratios recorded for these parameters, or None."""
    values = []
    for name in names:
        series = facts.series(UPDATE_RATIO.key(name))
        if series is not None:
            values.append(series[1][np.isfinite(series[1])])
    values = np.concatenate(values) if values else np.array([])
    return float(np.median(values)) if len(values) else None


def _paused(facts: RunFacts, f: Finding, readings: int = 3) -> bool:
    """A tensor found frozen that no gradient reached at all while it stood still (no input
    ran through it: an expert no token was routed to), and that moved at each of the
    ``readings`` readings or more after the last it stood still: a pause in its routing, not
    a frozen layer."""
    ratio = facts.series(f"{UPDATE_RATIO.name}/{f.where}") if f.where else None
    grads = facts.series(f"{GRAD_NORM.name}/{f.where}") if f.where else None
    if f.evidence.get("direction") != "frozen" or ratio is None or grads is None:
        return False
    steps, values = ratio
    moved = values > f.evidence.get("low", 0.0)
    k = int(np.searchsorted(steps, f.step, side="right"))  # the readings up to the finding
    began = k
    while began > 0 and not moved[began - 1]:
        began -= 1
    if began == k or np.any((grads[0] >= steps[began]) & (grads[0] <= f.step)):
        return False  # a gradient came and nothing applied it: frozen, not unreached
    last_still = int(np.flatnonzero(~moved)[-1])
    return len(steps) - 1 - last_still >= readings


def _back_in_range(facts: RunFacts, ratios: list[Finding], readings: int = 3) -> int | None:
    """When every update-ratio finding was of updates too large: the step from which each of
    those tensors stayed under its limit at every later reading (``readings`` of them at least)
    up to the break, if the run broke (what its ratios read after is the break's), or None."""
    if not ratios or any(f.evidence.get("direction") != "too_large" for f in ratios):
        return None
    back = []
    for f in ratios:
        series = facts.series(f"{UPDATE_RATIO.name}/{f.where}")
        high = f.evidence.get("high")
        if series is None or not isinstance(high, float | int):
            return None
        steps, values = series
        if facts.broke_at is not None:
            steps, values = steps[steps < facts.broke_at], values[steps < facts.broke_at]
        above = steps[~(values <= high)]  # a non-finite ratio is no sign of being back
        after = steps[steps > above.max()] if len(above) else steps
        if len(after) < readings:
            return None
        back.append(int(after[0]))
    return max(back)


def _plasticity(facts: RunFacts) -> Found | None:
    """Dead units or a collapsing rank (see :func:`_units_lost`), each layer named with the
    activation module whose forward read its units where one did (``fc1`` and ``act1``)."""
    found = _units_lost(facts)
    if found is None:
        return None
    # every other layer found losing units (at any severity) whose units mostly died too and
    # stayed dead: the same harm, in more than one place
    others = {f.where for f in facts.of(LOSS_OF_PLASTICITY) if f.where} - set(found.where)
    dead = sorted(
        (w for w in others if _most_died(facts, w, 0) and _stayed_dead(facts, w, 0)), key=_natural
    )
    if dead:
        found.where = found.where + dead
        found.summary += f"; over half of {layer_span(dead)}'s units died too, and stayed dead"
    applied_in = facts.activation_modules
    seen_at = {layer: applied_in[layer] for layer in found.where if layer in applied_in}
    if seen_at:
        found.where = found.where + sorted(set(seen_at.values()) - set(found.where), key=_natural)
        found.evidence["activation_modules"] = seen_at
    return found


def _units_lost(facts: RunFacts) -> Found | None:
    """Dead units or a collapsing rank; units first found dead in the ``EXPLOSION_LEAD`` steps
    before a break that was a gradient explosion (a spike of the gradient norm leading into
    it), or (in a recurrence) only after a break that gradient spikes led into, are its
    casualties, driven out of range by what exploded, not its cause; so are units of a run
    that went on to a non-finite value (not an fp16 overflow a GradScaler caught)."""
    found = _located((LOSS_OF_PLASTICITY,), "loss of plasticity")(facts)
    if found is not None:
        found = _killed_in_a_burst(facts, found)
        found = _killed_in_a_break_got_over(facts, found)
        first = found.first_step
        if first is not None and not (found.consequence_of or found.outlived):
            passed = _passed_just_before(facts, first)
            came_back = not any(_stayed_dead(facts, layer, first) for layer in found.where)
            most = [layer for layer in found.where if _most_died(facts, layer, first)]
            if passed and not came_back and most:
                # the raise passed, most of a layer's units died in it and stayed dead: the
                # loss may be back, the capacity to learn what comes next is not
                found.outlived = (
                    f"over half of {layer_span(most)}'s units died in the jolt of a raise of the "
                    "learning rate that passed, and stayed dead: the raise is over, the capacity "
                    "it cost is not"
                )
                found.set_off_by = ("sharpness_above_limit",)
                found.summary += f"; {found.outlived}"
            elif passed and (came_back or _ended_at_level_before(facts, first)):
                after = (
                    "the units came back after it"
                    if came_back
                    else "the loss ended back at its level before it, the units dead: they cost "
                    "it nothing"
                )
                found.consequence_of = (
                    f"first found at step {first}, just after {passed}; {after}: the raise's "
                    "jolt, not capacity lost"
                )
    else:
        found = _starved(facts)
    if found is None or found.first_step is None or found.outlived:
        return found
    multiplied = _multiplied_every_step(facts)
    if multiplied is not None and not found.consequence_of:
        # every weight multiplied by one factor a step: every pre-activation grows with them,
        # and a unit's inputs drift out of its working range
        found.consequence_of = f"{_multiplied_said(multiplied)}: units die as the weights grow"
        return found
    restarted = _jolted_by_a_restart(facts, found.first_step)
    if restarted is not None:
        found.consequence_of = (
            f"first found at step {found.first_step}, in the jolt of the optimizer's state "
            f"started again from nothing at step {restarted}"
        )
        return found
    broke = facts.broke_at
    if broke is None:
        return _outlived_in_a_run_that_held(facts, found, _stuck_at_the_start(facts) is not None)
    first = found.first_step
    went_nonfinite = [f.step for f in facts.of(NONFINITE) if f.step >= first]
    if went_nonfinite and not _caught_by_scaler(facts):
        # units that are dead output zeros, saturated ones +-1: neither makes a NaN or an Inf,
        # nor lets the weights grow into one; what grew did
        found.consequence_of = (
            f"first found at step {first}, and the run went on to a non-finite value at step "
            f"{min(went_nonfinite)}: dead or saturated units make none, what grew into it did"
        )
    elif first >= broke - EXPLOSION_LEAD and any(
        step >= first for step in _leading_into(facts, broke, GRAD_NORM_SPIKE)
    ):
        found.consequence_of = (
            f"first found at step {found.first_step}, as the gradients exploded into the break "
            f"at step {broke}: units driven out of range by the explosion"
        )
    elif (
        first > broke
        and set(found.where) <= set(facts.recurrent_modules)
        and any(
            step >= broke - EXPLOSION_LEAD
            for step in _leading_into(facts, first, GRAD_NORM_SPIKE, GRADIENT_SPIKE)
        )
    ):
        # a recurrence's units first seen dead only after it broke, with gradients that spiked
        # into the break or since: a hidden state blown up through time drives them out of range
        found.consequence_of = (
            f"first found at step {first} in a recurrence, after the run broke at step {broke} "
            "and gradients spiked around it: units driven out of range by the blow-up"
        )
    elif _stuck_at_the_start(facts) is not None:
        # broken back to where it started, finite, and sat there: as good as a run that held
        return _outlived_in_a_run_that_held(facts, found, stuck=True)
    return found


# Under this share of the rows collapsed at its last reading, a softmax collapse is the rows a
# run fits most surely, not a run stalled on them; logits whose log-partition ended under this
# share of its largest drift have come back, as has a learning rate that ended under this share
# of its level when the units died: what threw them is over.
PARTIAL_COLLAPSE, RECEDED = 0.5, 0.5


def _outlived_in_a_run_that_held(facts: RunFacts, found: Found, stuck: bool = False) -> Found:
    """Units of which a layer lost over half, and that stayed dead, in a run that never broke
    (or, ``stuck``, that broke back to its first loss and sat there, finite, no step throwing
    it any more): the steps that killed them (a rate typed too high, a peak too high) are
    over, and the capacity they cost is what stayed. They rank above the logits the same steps threw
    when those did not last (under ``PARTIAL_COLLAPSE`` of the rows collapsed at the end, a
    log-partition back under ``RECEDED`` of its largest drift): a share of rows fitted surely,
    or logits thrown and come back, cost nothing that stays; and above the step size's own
    diagnosis once the rate came down (under ``RECEDED`` of its level then): while it stays
    up, the rate is still what to fix."""
    first = found.first_step
    if first is None or found.consequence_of or found.outlived or found.severity == "info":
        return found
    dead = [w for w in found.where if _most_died(facts, w, first) and _stayed_dead(facts, w, first)]
    if not dead:
        return found
    came_down = _rate_came_down(facts, first)
    causes = []
    if stuck or came_down:
        causes.append("sharpness_above_limit")
    collapsed = _last_finite(facts, SOFTMAX_COLLAPSE.name)
    if collapsed is not None and collapsed < PARTIAL_COLLAPSE:
        causes.append("softmax_collapse")
    if _receded(facts.series(LOGIT_LSE_MEAN.name)):
        causes.append("output_logit_divergence")
    if not causes:
        return found
    over = ", the rate that killed them has come down" if came_down else ""
    held = "that sat back at its first loss" if stuck else "that did not break"
    found.outlived = (
        f"over half of {layer_span(dead)}'s units died from step {first} and stayed dead, in a "
        f"run {held}{over}: the capacity they cost is what stayed"
    )
    found.set_off_by = tuple(causes)
    found.summary += f"; {found.outlived}"
    return found


def _receded(series: tuple[np.ndarray, np.ndarray] | None) -> bool:
    """Whether the series' last finite reading drifted from its first under ``RECEDED`` of the
    largest drift it made."""
    if series is None:
        return False
    values = series[1][np.isfinite(series[1])]
    drift = np.abs(values - values[0]) if len(values) else values
    return bool(len(drift) and drift[-1] < RECEDED * drift.max())


def _rate_came_down(facts: RunFacts, step: int) -> bool:
    """Whether every optimizer group's learning rate ended under ``RECEDED`` of its largest up
    to ``step``."""
    rates = [(s, v) for s, v in facts.learning_rates if len(v) and (s <= step).any()]
    return bool(rates) and all(v[-1] < RECEDED * v[s <= step].max() for s, v in rates)


def _last_finite(facts: RunFacts, name: str) -> float | None:
    """The series' last finite reading, if any."""
    series = facts.series(name)
    if series is None:
        return None
    finite = series[1][np.isfinite(series[1])]
    return float(finite[-1]) if len(finite) else None


# Steps before the run ended that a tensor's gradient, and every forward statistic of the module
# around it, were last read while the run went on: no input reaches that module any more.
STARVED_FOR = 50
FORWARD = (ACT_RMS, DEAD_UNITS, ZEROED_UNITS, RELU_ACTIVE, SATURATED)


def _forward_last_read(facts: RunFacts) -> dict[str, int]:
    """For every module and every module around one, the last step any forward statistic of
    it (or of a module inside it) was read."""
    last: dict[str, int] = {}
    for name in facts.names:
        if not any(m.owns(name) for m in FORWARD) or not len(steps := facts.series(name)[0]):
            continue
        module = name.split("/", 1)[1]
        while True:
            last[module] = max(last.get(module, -1), int(steps[-1]))
            if "." not in module:
                break
            module = module.rsplit(".", 1)[0]
    return last


def _starved_module(
    facts: RunFacts, parameter: str, forward: dict[str, int]
) -> tuple[str, int] | None:
    """The module around ``parameter`` whose forward statistics (``forward``: the last step
    each module's were read), and the step after which the parameter's gradient, stopped being
    read ``STARVED_FOR`` steps or more before the run ended (both read before): an expert no
    token is routed to any more, a branch no input takes. Its units learn nothing, whatever the
    optimizer does. None otherwise (a layer frozen by hand still runs forward)."""
    grads, last = facts.series(f"{GRAD_NORM.name}/{parameter}"), facts.run.last_step
    if grads is None or len(grads[0]) < 10 or last is None:
        return None
    ended = int(grads[0][-1])
    module = parameter
    while last - ended >= STARVED_FOR and "." in module:
        module = module.rsplit(".", 1)[0]
        if module in forward:
            return (module, ended) if last - forward[module] >= STARVED_FOR else None
    return None


def _never_routed(facts: RunFacts) -> Found | None:
    """Members of a module list (``experts.0``) found unused at the start, none of whose
    gradients was ever read while a sibling's were (``experts.2``), over ``STARVED_FOR`` steps
    or more: an expert no token was ever routed to. Dead code is otherwise harmless (an unused
    pooler); a list whose members learn while one of them never does is not."""
    last = facts.run.last_step
    unused = [
        f
        for f in facts.of(UPDATE_RATIO_OUT_OF_RANGE)
        if f.where and f.evidence.get("direction") == "unused"
    ]
    since = min((f.step for f in unused), default=None)
    if since is None or last is None or last - since < STARVED_FOR:
        return None
    graded = {n.split("/", 1)[1] for n in facts.names if GRAD_NORM.owns(n) and "/" in n}
    members = set()
    for f in unused:
        if f.where in graded:
            continue  # a gradient reached it later
        parts = f.where.split(".")
        at = next((i for i in range(len(parts) - 2, 0, -1) if parts[i].isdigit()), None)
        if at is None:
            continue
        siblings, own = ".".join(parts[:at]) + ".", ".".join(parts[: at + 1])
        if any(n.startswith(own + ".") for n in graded):
            continue  # the member learns, this tensor of it is unused (WaveNet's last residual)
        if any(n.startswith(siblings) for n in graded):
            members.add(own)
    if not members:
        return None
    modules = sorted(members, key=_natural)
    return Found(
        f"no input ever reached {layer_span(modules)}: their gradients were never read, while "
        f"the other members of their lists learnt, to step {last} (an expert no token is "
        "routed to): their units never learnt",
        since,
        modules,
        {"never_reached": len(modules)},
    )


def _starved(facts: RunFacts) -> Found | None:
    """Tensors found frozen whose modules no input reached any more (see
    :func:`_starved_module`), or list members no input ever reached (:func:`_never_routed`):
    their units stopped learning, starved, not frozen by a setting."""
    frozen = [
        f
        for f in facts.of(UPDATE_RATIO_OUT_OF_RANGE)
        if f.severity != "info" and f.where and f.evidence.get("direction") == "frozen"
    ]
    forward = _forward_last_read(facts) if frozen else {}
    starved = [m for f in frozen if (m := _starved_module(facts, f.where, forward)) is not None]
    if not starved:
        return _cut_off(facts, frozen) if frozen else _never_routed(facts)
    if len(starved) < len(frozen):
        return None
    modules = sorted({m for m, _ in starved}, key=_natural)
    since = min(step for _, step in starved)
    return Found(
        f"no input reached {layer_span(modules)} after step {since}: neither their gradients "
        f"nor their forward passes were read again, though the run went on to step "
        f"{facts.run.last_step} (an expert no token is routed to, a branch no input takes): "
        "their units stopped learning",
        since,
        modules,
        {"starved_since": since, "frozen_tensors": len(frozen)},
    )


def _cut_off(facts: RunFacts, frozen: list[Finding]) -> Found | None:
    """Tensors found frozen whose gradient was read, and was exactly 0, from their first
    reading still to the end of the run, with no dead units found: no signal reaches them (an
    input masked to zeros, a path the loss never sees). A setting that freezes a layer leaves
    its gradient (a rate of 0, a tensor left out of the optimizer) or removes it
    (``requires_grad=False``); it never makes it exactly 0."""
    if not frozen or facts.of(LOSS_OF_PLASTICITY):
        return None
    for f in frozen:
        grads = facts.series(f"{GRAD_NORM.name}/{f.where}")
        if grads is None or not _no_gradient(facts, f.where, f.step):
            return None
        if np.any(grads[1][grads[0] >= f.step] != 0.0):
            return None  # a gradient came back: it learns again
    modules = sorted({f.where.rsplit(".", 1)[0] for f in frozen}, key=_natural)
    since = min(f.step for f in frozen)
    return Found(
        f"no gradient reaches {layer_span(modules)}: from step {since} to step "
        f"{facts.run.last_step} the gradient of {layer_span([f.where for f in frozen])} was "
        "exactly 0 (its input masked to zeros, a path the loss never sees): its units never "
        "learn",
        since,
        modules,
        {"zero_gradient_since": since, "frozen_tensors": len(frozen)},
    )


def _killed_in_a_burst(facts: RunFacts, found: Found) -> Found:
    """Units first found dead during a burst of the learning rate that was over soon after (a
    restart without warm-up, a rate set by hand for a few steps): the burst is what killed
    them, and they stayed dead after it: the harm that stayed is what to fix, dated to the
    burst."""
    burst = _rate_burst(facts)
    first = found.first_step
    if burst is None or first is None or not burst[0] <= first <= burst[1] + BURST_READ:
        return found
    start, end, jump = burst
    if not any(_stayed_dead(facts, layer, first) for layer in found.where):
        found.consequence_of = (
            f"first found in a burst of the learning rate ({jump:.3g}x at step {start}, back "
            f"at step {end}), and they came back after it: the burst's jolt was the harm"
        )
        return found
    found.first_step = start
    found.outlived = (
        f"killed in a burst of the learning rate ({jump:.3g}x at step {start}, back at step "
        f"{end}): the burst is over, the dead units stayed"
    )
    found.set_off_by = ("sharpness_above_limit",)
    found.summary += f"; {found.outlived}"
    return found


# Losses before a break within this many times the run's first: the break was its first trouble.
CALM_BEFORE = 2.0


def _killed_in_a_break_got_over(facts: RunFacts, found: Found) -> Found:
    """Units first found dead at the first reading after the run broke (an update far too
    large, one gradient explosion), the run's first trouble (every loss before it within
    ``CALM_BEFORE`` times its first), in a run that came back from the break on its own (every
    loss finite, ending below its best sustained level before it) while the units stayed dead:
    the break is over, the dead units stayed: the harm that stayed is what to fix, dated to the
    break. A run thrown about before it broke was at a step size it could not train at."""
    broke, first = facts.broke_at, found.first_step
    if broke is None or first is None or found.consequence_of or found.outlived:
        return found
    seen = found.evidence.get("first")
    before = seen.get(PREVIOUS_READING) if isinstance(seen, dict) else None
    loss = facts.series(LOSS.name)
    if first < broke or not isinstance(before, int) or before > broke or loss is None:
        return found  # not found at the first reading after the break
    steps, values = loss
    calm = values[steps < broke]
    if not len(calm) or not np.isfinite(values).all() or calm.max() > CALM_BEFORE * calm[0]:
        return found
    # the level it broke from: its best sustained loss before the break
    level = float(np.min(_running_medians(calm, min(5, len(calm)))))
    ended = _ended_below(facts, level)
    if ended is None or not any(_stayed_dead(facts, layer, first) for layer in found.where):
        return found
    found.first_step = broke
    found.outlived = (
        f"killed as the run broke at step {broke}, which it came back from on its own (to "
        f"{ended:.4g}, below its {level:.4g} before the break): the break is over, the dead "
        "units stayed"
    )
    found.set_off_by = ("exploding_gradients", "sharpness_above_limit")
    found.summary += f"; {found.outlived}"
    return found


def _dead_readings(facts: RunFacts, layer: str, since: int) -> Iterator[np.ndarray]:
    """The layer's finite dead (then saturated) fractions read from ``since`` on, one array per
    family the run recorded for it."""
    for family in (DEAD_UNITS, SATURATED):
        series = facts.series(f"{family.name}/{layer}")
        if series is not None:
            steps, values = series
            yield values[(steps >= since) & np.isfinite(values)]


def _most_died(facts: RunFacts, layer: str, since: int) -> bool:
    """Whether half or more of the layer's units read dead (or saturated) at some reading from
    ``since`` on."""
    return any(len(after) and after.max() >= 0.5 for after in _dead_readings(facts, layer, since))


def _stayed_dead(facts: RunFacts, layer: str, since: int) -> bool:
    """The layer's dead (or saturated) fraction at its last reading is still at least half its
    largest since ``since``; or, with no unit dead on every example, the share of its outputs
    its ReLU passes is still at most half its first reading (dying units that stayed so)."""
    for after in _dead_readings(facts, layer, since):
        if len(after) and after.max() > 0:
            return bool(after[-1] >= 0.5 * after.max())
    series = facts.series(f"{RELU_ACTIVE.name}/{layer}")
    if series is None:
        return False
    steps, values = series
    finite = np.isfinite(values)
    after = values[(steps >= since) & finite]
    return len(after) > 0 and bool(after[-1] <= 0.5 * values[finite][0])


# How many steps a burst of the learning rate may last and still be a burst (back within 2x of
# its level before), and how long after it units first read dead may have died in it (the
# dead-unit signal reads on a cadence).
BURST_STEPS, BURST_READ = 30, 25


def _rate_bursts(facts: RunFacts, jump: float = 4.0) -> Iterator[tuple[int, int, float]]:
    """Each time some group's learning rate rose ``jump`` times or more from one reading to the
    next and came back within 2x of its level before within ``BURST_STEPS`` steps: (the step
    it rose, the step it was back, the factor)."""
    for steps, values, i in _raised_at_a_stroke(facts, jump):
        start, before = int(steps[i]), float(values[i - 1])
        back = (steps > start) & (steps <= start + BURST_STEPS) & (values <= 2 * before)
        if back.any():
            yield start, int(steps[np.argmax(back)]), float(values[i]) / before


def _rate_burst(facts: RunFacts, jump: float = 4.0) -> tuple[int, int, float] | None:
    """The first burst of the learning rate (see :func:`_rate_bursts`), if any."""
    return next(_rate_bursts(facts, jump), None)


def _burst_said(burst: tuple[int, int, float]) -> str:
    """A burst of the learning rate (see :func:`_rate_bursts`) in words."""
    start, back, factor = burst
    return f"the learning rate was raised {factor:.3g}x at step {start} and put back at step {back}"


def _burst_before(facts: RunFacts, step: int) -> tuple[int, int, float] | None:
    """The burst of the learning rate (see :func:`_rate_bursts`) that ``step`` falls in, or
    ``CONFIRMED_SOON`` steps or fewer after, if any."""
    return next((b for b in _rate_bursts(facts) if b[0] <= step <= b[1] + CONFIRMED_SOON), None)


# What jolts a run: a spike of the loss or of the gradient norm, a climb, a NaN.
JOLTS = (LOSS_SPIKE, GRAD_NORM_SPIKE, LOSS_DIVERGENCE, NONFINITE)
# Losses before a raise of the learning rate that give the level the run stood at, and how
# close to that level the running median (of 5) of the losses after it must come back.
RAISE_LEVEL_OVER, BACK_AT_LEVEL = 20, 1.1


def _raised_before(facts: RunFacts, step: int, within: int = CONFIRMED_SOON) -> int | None:
    """The last step, ``within`` steps or fewer before ``step`` (or at it), at which some
    group's learning rate was raised 4x or more at a stroke; None if none was."""
    raised = [
        int(steps[i])
        for steps, _, i in _raised_at_a_stroke(facts, 4.0)
        if step - within <= steps[i] <= step
    ]
    return max(raised) if raised else None


def _level_before_raise(facts: RunFacts, raised: int) -> float | None:
    """The median of the ``RAISE_LEVEL_OVER`` finite losses before the learning rate was raised
    at step ``raised``: the level the run stood at; None with too few of them or not positive."""
    loss = facts.series(LOSS.name)
    if loss is None:
        return None
    steps, values = loss
    level = values[(steps < raised) & (steps >= raised - RAISE_LEVEL_OVER) & np.isfinite(values)]
    if len(level) < RAISE_LEVEL_OVER // 2 or not np.median(level) > 0:
        return None
    return float(np.median(level))


def _ended_at_level_before(facts: RunFacts, step: int) -> bool:
    """Whether the median of the run's last ``ENDED_OVER`` losses (all finite) is within
    ``BACK_AT_LEVEL`` of the level the run stood at before the raise of the learning rate just
    before ``step`` (see :func:`_level_before_raise`)."""
    raised, loss = _raised_before(facts, step), facts.series(LOSS.name)
    if raised is None or loss is None or not np.isfinite(loss[1][-ENDED_OVER:]).all():
        return False
    level = _level_before_raise(facts, raised)
    return level is not None and bool(np.median(loss[1][-ENDED_OVER:]) <= BACK_AT_LEVEL * level)


def _passed_just_before(facts: RunFacts, step: int) -> str:
    """What a raise of the learning rate at a stroke, ``CONFIRMED_SOON`` steps or fewer before
    ``step`` (or at it), that passed (see :func:`_a_passing_raise`) was: '' when there was
    none."""
    raised = _raised_before(facts, step)
    passed = "" if raised is None else _a_passing_raise(facts, raised, step)
    if not passed:
        return ""
    return f"the learning rate was raised 4x or more at a stroke at step {raised}, and {passed}"


def _a_passing_raise(facts: RunFacts, start: int, jolted: int) -> str:
    """How a raise of the learning rate at a stroke (4x or more, from ``start`` to ``jolted``)
    that jolted the run at ``jolted`` passed, when it did ('' when it did not): the rate was
    back within 2x of its level before within ``BURST_STEPS`` steps (a glitch, a rate set by
    hand for a few steps); or the loss came back on its own to ``BACK_AT_LEVEL`` times the
    level it stood at before the raise, ended there, finite, with no jolt after it came back,
    while the schedule carried the rate down to half the raised one or less by the end (a warm
    restart's catapult). Either way the run never trained on at a rate it cannot train at: the
    jolt was an event of the raise, not a step size above 2/sharpness for good."""
    for rose, back, _ in _rate_bursts(facts):
        if start <= rose <= jolted:
            return (
                f"the rate was back at step {back}: a glitch of the schedule, over before the "
                "run could train at it"
            )
    for steps, values, i in _raised_at_a_stroke(facts, 4.0):
        at = int(steps[i])
        if not start <= at <= jolted:
            continue
        loss, level = facts.series(LOSS.name), _level_before_raise(facts, at)
        if loss is None or not values[-1] <= values[i] / 2:
            return ""  # a rate raised and kept is one the run trains at from there on
        lsteps, lvalues = loss
        after = lvalues[lsteps > jolted]
        if level is None or len(after) < 5 or not np.isfinite(after).all():
            return ""
        back_at = np.flatnonzero(_running_medians(after) <= BACK_AT_LEVEL * level)
        if not len(back_at) or np.median(after[-ENDED_OVER:]) > BACK_AT_LEVEL * level:
            return ""
        # back, and calm from there: a rate above 2/sharpness jolts the run again and again
        back = int(lsteps[lsteps > jolted][back_at[0]])
        if not any(f.step > back for f in facts.of(*JOLTS) if f.severity != "info"):
            return (
                f"the loss came back on its own to the level it stood at before the raise "
                f"({level:.4g}) as the schedule carried the rate down: the jolt of a warm "
                "restart, which the run trained through"
            )
    return ""


def _positive(values: np.ndarray) -> np.ndarray:
    """Which readings are finite and above 0 (learning rates to compare: a rate of 0 is none)."""
    return np.isfinite(values) & (values > 0)


def _raised_at_a_stroke(
    facts: RunFacts, jump: float
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Each reading ``i`` at which some group's learning rate was ``jump`` times or more the
    reading before, with that group's (steps, rates), positive and finite."""
    for steps, values in facts.learning_rates:
        keep = _positive(values)
        steps, values = steps[keep], values[keep]
        for i in np.flatnonzero(values[1:] >= jump * values[:-1]) + 1:
            yield steps, values, int(i)


def _died_before(frozen: Finding, dead: list[Finding]) -> bool:
    """Whether the module holding a frozen tensor (``frozen``) was found with dead units (one of
    ``dead``) at an earlier step."""
    return any(
        frozen.where and _inside(frozen.where, d.where) and d.step < frozen.step for d in dead
    )


def _no_gradient(facts: RunFacts, parameter: str | None, step: int, records: int = 3) -> bool:
    """The gradient norm of ``parameter`` was exactly 0 at each of the last ``records`` readings
    of its update ratio up to ``step`` (those its frozen finding was made of: ``patience``): no
    gradient reached it (a rate of 0 leaves the gradient as it was); units flickering alive
    between readings do not count against it. With no ratio stored, its last gradients."""
    grads = facts.series(f"{GRAD_NORM.name}/{parameter}") if parameter else None
    if grads is None:
        return False
    steps, values = grads
    ratios = facts.series(f"{UPDATE_RATIO.name}/{parameter}")
    readings = steps if ratios is None else ratios[0]  # with no ratio stored, the gradient's
    read = readings[readings <= step][-records:]
    at = values[np.isin(steps, read)]
    return len(read) == records and len(at) == records and bool(np.all(at == 0.0))


# Weights that grew this many times over, and this many times more than any other weights did,
# amplify the gradients of the layers before them: they are where an explosion sits.
AMPLIFIER_GROWTH, AMPLIFIER_LEAD = 10.0, 3.0
# The median weight tensor grew this many times over: the weights grew everywhere.
EVERYWHERE_GROWTH = 2.5
# A recurrent module's gradient grew this many times over (the detector's own per-tensor test,
# ``GradientGrowth.local_growth``): the explosion goes through it.
RECURRENT_GROWTH = 3.0
# Weights that grew geometrically for this many steps, by this many times, while the loss set no
# new best level, before the run's trouble began: a multiplicative feedback on them (a decay or
# penalty of the wrong sign), which raises every gradient that flows through them.
RUNAWAY_SPAN, RUNAWAY_GROWTH = 80, 2.0
# Growth over the span that runs away even while the loss still improves (3% compounding a
# step: a learnt direction slows long before it is ten times larger; 4x would call a
# MobileBERT's weights, grown 4x after a poisoned step, a runaway).
RUNAWAY_ANYWAY = 10.0
EXPLOSION_LEAD = 10  # steps a gradient explosion's spikes come before the break they make
# Steps into a climb from which gradient growth first found followed it (before, the growth
# may have driven it, found late on the detector's patience).
FOLLOWED_AFTER = 50
BURST = 100.0  # a gradient norm this many times its median so far: a burst, not drift


def _exploding(facts: RunFacts) -> Found | None:
    """Gradient growth, placed where it starts. The gradient grows most in the layers *before*
    weights that grow (backpropagation multiplies by them), so when one weight tensor grew far
    more than all others up to the growth finding, its module is named first. With no growth
    finding, a break that was a gradient explosion after a weight ran away is one too."""
    stacked = _grown_back_through_a_stack(facts)
    if stacked is not None:
        return stacked
    found = _located((GRADIENT_GROWTH,), "gradient norm growing without bound, starting")(facts)
    if found is None:
        # a recurrence's bursts that led to the same break date it from the first of them
        late = [
            f
            for f in (
                _spike_into_explosion(facts),
                _bursts_through_time(facts),
                _growing_bursts(facts),
                _got_over_at_once(facts, _exploded_from_the_start(facts))
                or _held_down_by_clipping(facts),
            )
            if f
        ]
        return _runaway_into_explosion(facts) or min(late, key=lambda f: f.first_step, default=None)
    first = facts.of(GRADIENT_GROWTH)[0]
    scaled = _scaled_from_the_start(facts, np.array([]), first.step)
    came = scaled is not None and first.step == scaled[0]  # found at the number's first reading
    stroke = _scaled_at_a_stroke(facts, first.step)
    grew_from = first.evidence.get(GROWTH_BEGAN, first.step)
    if stroke is not None and (
        stroke[0] < grew_from <= stroke[1] or stroke[0] < first.step <= stroke[1] + GROWTH_PATIENCE
    ):
        scaled, came = stroke[1:], True  # the growth began, or was confirmed, as the number came
    thrown = _thrown_by_a_one_step_spike(facts, first)
    if thrown is not None:
        spike, size, after = thrown
        found.consequence_of = (
            f"the gradient spike at step {spike} ({size:.3g}, and {after:.3g} the step after: one "
            "batch's, not a growth): its update, carried on by the optimizer's momentum, threw "
            "the weights, and the gradients rose with the loss after it"
        )
        return found
    if scaled is not None and came:
        # a number multiplying the logits multiplies every gradient that flows back through them
        found.consequence_of = (
            f"the logits are their layer's output times {scaled[1]:.3g}, a fixed number from "
            f"step {scaled[0]} (a temperature applied the wrong way): every gradient back "
            "through them is as many times larger"
        )
        return found
    born = _exploded_from_the_start(facts)
    if born is not None and first.evidence.get(AT_INITIALISATION):
        # the finding names the tensor with the largest gradient for its norm (a bias at 0);
        # the chain through depth or time says where the signal was amplified
        return born
    fed = [*born.where, facts.output_layer] if born is not None else []
    if born is not None and any(m and _inside(first.where or "", m) for m in fed):
        # the growth found later is in the recurrence or the chain of layers that amplified
        # the very first gradient, or in the output layer they feed: it exploded from the
        # start, and grew on from there
        return born
    if first.evidence.get(WRECKED_WEIGHTS) and first.step == found.first_step:
        found.summary = (
            f"one gradient explosion at step {first.step}, in {first.where}: the gradient norm "
            f"reached {first.evidence.get('grad_norm', math.nan):.3g}, "
            f"{first.evidence.get('ratio', math.nan):.3g}x the next one, and its update "
            "wrecked the weights"
        )
    if facts.broke_at is None:
        # a run that did not break, whose loss kept improving long after: the gradients grew
        # as the model learned (a classifier sharpening its logits), harmless so far
        best = learnt_after(facts, found.first_step)
        if best is not None:
            found.severity = "info"
            found.summary += (
                f"; the loss kept improving until step {best} and the run did not break: the "
                "gradients grew as the model learned"
            )
            return found
    if found.first_step is None:
        return found
    replaced = _replaced_just_before(facts, found.first_step)
    if replaced is not None:
        found.consequence_of = (
            f"the weights were replaced between steps at step {replaced} (an EMA swap, a "
            "checkpoint reload): the gradients grew with the loss of the weights put back"
        )
        return found
    restarted = _jolted_by_a_restart(facts, found.first_step)
    if restarted is not None:
        found.consequence_of = (
            f"the optimizer's state started again from nothing at step {restarted}: its first "
            "steps threw the weights, and the gradients grew with the loss they made"
        )
        return found
    burst = _burst_before(facts, found.first_step)
    if burst is not None:
        found.consequence_of = (
            f"{_burst_said(burst)}: those steps threw the weights, and the gradients grew with "
            "the loss they made"
        )
        return found
    if (skipped := _overflowing_around(facts, found.first_step)) is not None:
        found.consequence_of = (
            f"the GradScaler skipped step {skipped} for a float16 overflow: the gradients were "
            "at float16's edge as they were seen to grow"
        )
        return found
    head = _output_layer_ran_away(facts)
    if head is not None:
        layer, began, factor = head
        found.consequence_of = (
            f"the weights of the output layer {layer} grew {factor:.3g}x from step {began}: "
            "the gradients grew with the logits they make"
        )
        return found
    if _lone_burst(facts, found.first_step):
        found.consequence_of = (
            f"the gradient burst out of a steady level at step {found.first_step}, in a model "
            "with no recurrence to explode through: one spike, whose update wrecked the "
            "weights, not gradients that grew"
        )
        return found
    fading = _fading_since_a_spike(facts, found.first_step)
    if fading is not None:
        spike, peak, now = fading
        found.consequence_of = (
            f"the gradient norm had been falling since the spike at step {spike} ({peak:.3g} "
            f"then, {now:.3g} when the growth was found): the spike's aftermath, read against an "
            "earlier low, not gradients growing"
        )
        return found
    stage = _stepped_up_by_the_data(facts, found.first_step)
    if stage is not None and stage[3] <= FELL_FROM_STAGE and _gradient_fell_after(facts, stage[0]):
        found.consequence_of = (
            f"the gradient stepped up with the loss at step {stage[0]}, after an ordinary "
            "update (what the model is asked to fit changed there), and has fallen since with "
            "the loss: no growth"
        )
        return found
    shock = _shock_got_over(facts, found.first_step)
    if shock is not None:
        found.consequence_of = (
            f"the gradients rose at once with the spike at step {shock} and fell back to their "
            "level before it by the end of the run: one shock's aftermath, not gradients "
            "growing without bound"
        )
        return found
    multiplied = _multiplied_every_step(facts)
    if multiplied is not None:
        # every weight multiplied by one factor a step: every gradient through them grows too
        found.consequence_of = f"{_multiplied_said(multiplied)}: the gradients grew with them"
        found.evidence["weights_multiplied"] = multiplied
        return found
    pushed = _pushed_outward(facts)
    if pushed is not None:
        # an explosion's updates go every way (Adam bounds each): weights pushed one way at
        # that pace were asked to grow, and every gradient through them grew with them
        found.consequence_of = f"{_pushed_said(pushed)}: the gradients grew with them"
        found.evidence["pushed_stride"] = pushed
        return found
    runaway = facts.runaway_weights
    if runaway is not None and runaway[1] < found.first_step:
        name, began, factor, share = runaway
        if share > 0.5:
            # most weight tensors ran away together: what multiplies them multiplies all
            found.consequence_of = (
                f"{share:.0%} of the weight tensors grew geometrically together: the gradients "
                "grew with them; look for what scales every weight (a weight decay of the "
                "wrong sign)"
            )
            found.evidence["runaway_share"] = share
            return found
        module = name.rpartition(".")[0] or name
        climbing = facts.climbing_at(found.first_step)
        if climbing is not None and found.first_step - climbing >= FOLLOWED_AFTER:
            # the loss climbed long before any gradient grew: the weights' growth moved the
            # fit, the gradients followed it late (see _loss_divergence)
            found.consequence_of = (
                f"the loss was already climbing from step {climbing}, before the gradients "
                f"were seen to grow: they grew with it and with the weights of {module}, "
                f"which grew geometrically from step {began}"
            )
            return found
        found.first_step = began
        found.where = [module] + [w for w in found.where if w != module]
        said, found.evidence["runaway_weights"] = _ran_away(runaway, "the trouble")
        found.summary += f"; before it, {said}, and every gradient through them grows with them"
        return found
    climbing = facts.climbing_at(found.first_step)
    if climbing is not None and found.first_step - climbing > CONFIRMED_SOON:
        # nothing grew before the loss did: a loss climbing for its own reasons (a drifting
        # target, a schedule of the wrong sign) makes every gradient grow with its error
        found.consequence_of = (
            f"the loss was already climbing from step {climbing}, before the gradients were "
            "seen to grow: they grew with the loss"
        )
        return found
    grew = _error_grew_the_gradient(facts, first)
    if grew is not None:
        began, times = grew
        found.consequence_of = (
            f"the loss grew {times:.3g}x from step {began} as the gradient norm grew "
            f"{first.evidence['growth']:.3g}x, and its climb was found first: a growing error "
            "makes a growing gradient (a squared error's grows as its square root), where a "
            "network that amplifies its gradient grows it far faster than the loss"
        )
        return found
    until = max(found.first_step, facts.broke_at or 0)
    if facts.climbing_from is not None:
        # the weights as the loss began to climb: the updates of a climb's last steps, made of
        # exploding gradients, grow every weight they touch
        until = min(until, facts.climbing_from)
    if any(f.evidence.get(WRECKED_WEIGHTS) for f in facts.of(GRADIENT_GROWTH)):
        until = found.first_step - 1  # the explosion's own update grew the weights it wrecked
    until = _before_explosion(facts, until)
    burst = _first_burst(facts, until)
    if burst is not None:
        until = burst - 1  # what a gradient burst's update grew is the explosion's own doing
    growth = _weight_growth(facts, until=until)
    if _grown_everywhere(found, facts, until, "the gradients", growth):
        # Every weight grew (a weight decay with its sign flipped, a regulariser rewarding
        # size): gradients grow with the weights they flow through, in every layer at once.
        return found
    grown = _amplifier(growth)
    if grown is not None:
        name, factor = grown
        module = name.rpartition(".")[0] or name
        found.where = [module] + [w for w in found.where if w != module]
        found.summary += (
            f"; the weights of {module} grew {factor:.3g}x, far more than any other, and "
            "multiply the gradients of every layer before them"
        )
        found.evidence["grown_weights"] = {"parameter": name, "factor": factor}
        return found
    through_time = _recurrent_origin(facts, found)
    if through_time is not None:
        module, factor = through_time
        found.where = [module] + [w for w in found.where if w != module]
        found.summary += (
            f"; the gradient of the recurrent {module} grew {factor:.3g}x with it: gradients "
            "explode through time there, and the layers before it inherit the growth"
        )
        found.evidence["through_time"] = {"module": module, "factor": factor}
    return found


def _error_grew_the_gradient(facts: RunFacts, growth: Finding) -> tuple[int, float] | None:
    """(the step the gradient's growth rose from, how many times the loss grew since) when a
    loss climb was found at or before ``growth`` and the loss's level (the median of its five
    finite readings up to a step) grew at least as many times from the growth's best-level
    step to the finding as the gradient norm did: the error grew, and the gradient with it."""
    began, grown = growth.evidence.get("best_level_step"), growth.evidence.get("growth")
    loss = facts.series(LOSS.name)
    if not isinstance(began, int) or not isinstance(grown, (int, float)) or loss is None:
        return None
    if facts.climbing_at(growth.step) is None:
        return None  # the gradient grew before any climb of the loss was seen
    steps, values = loss
    finite = np.isfinite(values)
    then = values[finite & (steps <= began)][-5:]
    now = values[finite & (steps <= growth.step)][-5:]
    if len(then) < 5 or len(now) < 5 or not np.median(then) > 0:
        return None
    times = float(np.median(now) / np.median(then))
    return (began, times) if times >= grown else None


# Gradient norms read before a burst, each within this factor of their median: a steady level.
STEADY_BEFORE, STEADY_WITHIN = 5, 3.0


# A growth found this soon after a spike, the run then going on this many steps, and its gradient
# norm's median over them back within GOT_OVER times its median over as many steps before the
# spike: the run got over that shock.
SHOCK_SPAN, GOT_OVER = 50, 3.0


def _shock_got_over(facts: RunFacts, step: int) -> int | None:
    """The step of the spike (of the loss or the gradient) that the growth finding at ``step``
    came within ``CONFIRMED_SOON`` steps of, when the run went on ``SHOCK_SPAN`` steps or more
    and its gradient norm's median over its last ``SHOCK_SPAN`` steps stood within
    ``GOT_OVER`` times that over the ``SHOCK_SPAN`` steps before the spike, either way (a
    gradient collapsed far below is wrecked weights, not a recovery), all finite: the
    gradients rose with the shock and fell back, where gradients that explode keep growing or
    break the run. The growth detector measures against the lowest level a tensor's gradient
    ever held (often its first steps'), so one shock can carry it over its bar."""
    kinds = (LOSS_SPIKE, GRAD_NORM_SPIKE, GRADIENT_SPIKE)
    spikes = [f.step for f in facts.of(*kinds) if step - CONFIRMED_SOON <= f.step <= step]
    series = facts.series(GRAD_NORM.name)
    if not spikes or series is None or facts.broke_at is not None:
        return None
    steps, values = series
    shock = min(spikes)
    before = values[(steps < shock) & (steps >= shock - SHOCK_SPAN)]
    last = values[steps > steps[-1] - SHOCK_SPAN]
    if steps[-1] - step < SHOCK_SPAN or len(before) < SHOCK_SPAN // 2 or not len(last):
        return None
    if not (np.all(np.isfinite(before)) and np.all(np.isfinite(last))):
        return None
    ratio = float(np.median(last)) / max(float(np.median(before)), np.finfo(float).tiny)
    return shock if 1.0 / GOT_OVER <= ratio <= GOT_OVER else None


def _gradient_fell_after(facts: RunFacts, step: int, over: int = 10) -> bool:
    """Whether the gradient norm's median over its last ``over`` finite readings stood below
    that over the ``over`` readings from ``step`` on."""
    series = facts.series(GRAD_NORM.name)
    if series is None:
        return False
    steps, values = series
    after = values[(steps >= step) & np.isfinite(values)]
    return len(after) >= 2 * over and np.median(after[-over:]) < np.median(after[:over])


def _fading_since_a_spike(facts: RunFacts, step: int) -> tuple[int, float, float] | None:
    """(the spike's step, the gradient norm there, the norm at ``step``) when a gradient spike
    (not info) came within ``CONFIRMED_SOON`` steps before the growth finding at ``step``, was
    the largest norm since, and the norm at ``step`` had fallen to half of it or less."""
    spikes = [
        f.step
        for f in facts.of(GRAD_NORM_SPIKE)
        if f.severity != "info" and step - CONFIRMED_SOON <= f.step < step
    ]
    series = facts.series(GRAD_NORM.name)
    if not spikes or series is None:
        return None
    steps, values = series
    since = values[(steps >= min(spikes)) & (steps <= step)]
    if len(since) < 2 or not np.isfinite(since).all():
        return None
    peak, now = float(since[0]), float(since[-1])
    if since.max() > peak or not now <= 0.5 * peak:
        return None
    return min(spikes), peak, now


def _lone_burst(facts: RunFacts, step: int) -> bool:
    """The growth finding at ``step`` is one burst that wrecked the weights (the detector's
    explosion-then-collapse), in a model with no recurrent module, out of a gradient norm
    that held steady over the ``STEADY_BEFORE`` readings before it: nothing grew into it, so
    it is a spike (a module's gradient scaled at a stroke), not an explosion."""
    burst = [f for f in facts.of(GRADIENT_GROWTH) if f.step == step]
    if not burst or not burst[0].evidence.get(WRECKED_WEIGHTS) or facts.recurrent_modules:
        return False
    series = facts.series(GRAD_NORM.name)
    if series is None:
        return False
    steps, values = series
    before = values[steps < step][-STEADY_BEFORE:]
    if len(before) < STEADY_BEFORE or not np.all(np.isfinite(before) & (before > 0)):
        return False
    level = float(np.median(before))
    return bool(np.all(before <= STEADY_WITHIN * level) and np.all(before >= level / STEADY_WITHIN))


def _runaway_into_explosion(facts: RunFacts) -> Found | None:
    """No gradient grew for long before the break, but the break was a gradient explosion (a
    spike of the gradient norm just before it) and one weight tensor had run away before it
    (see :func:`_runaway_weights`): what multiplied it compounded until the gradients through
    it exploded at once (a recurrence's feedback weight passing 1)."""
    broke, runaway = facts.broke_at, facts.runaway_weights
    if broke is None or runaway is None or runaway[3] > 0.5:
        return None
    if _output_layer_ran_away(facts) is not None:
        return None  # the logits ran away with the output layer (see _output_logits)
    if not _leading_into(facts, broke, GRAD_NORM_SPIKE):
        return None
    name, began, factor, _ = runaway
    module = name.rpartition(".")[0] or name
    return Found(
        f"the gradients exploded at step {broke}, after the weights of {module} grew "
        f"geometrically from step {began} ({factor:.3g}x over the last {RUNAWAY_SPAN} steps) "
        "while the loss set no new best: something multiplies them (a decay or penalty of the "
        "wrong sign, a feedback gain), and every gradient through them grew with them until "
        "they exploded",
        began,
        [module],
        {"runaway_weights": {"parameter": name, "began": began, "factor": factor}},
        "critical",
    )


def _spike_into_explosion(facts: RunFacts) -> Found | None:
    """No gradient grew for long before the break, but the gradient norm (or one tensor's
    gradient first) spiked and the run never came back: the loss rose at every step after the
    spike, ``ONE_OFF`` times or more, until it went non-finite within ``EXPLOSION_LEAD``
    steps. One step's gradient that compounds into NaN is an explosion, not a spike the run
    absorbed; it starts in the tensors that spiked most, a recurrence's first."""
    nonfinite = facts.of(NONFINITE)
    loss = facts.series(LOSS.name)
    if not nonfinite or loss is None:
        return None
    nan_at = nonfinite[0].step
    # the whole gradient's spike, or one tensor's first (the global norm's baseline may
    # already hold the start of the climb)
    spikes = [
        s for s in _leading_into(facts, nan_at, GRAD_NORM_SPIKE, GRADIENT_SPIKE) if s < nan_at
    ]
    if not spikes:
        return None
    start = min(spikes)
    steps, values = loss
    between = values[(steps >= start) & (steps < nan_at)]
    # non-finite the step after a gradient the network amplified: no step to compound
    at_once = _amplified_at(facts, start) if len(between) == 1 else None
    if at_once is None and (len(between) < 2 or not np.all(np.diff(between) > 0)):
        return None  # the loss came down after the spike: the run absorbed it
    if at_once is None and not between[-1] >= ONE_OFF * between[0]:
        return None  # a loss creeping up as before: nothing compounded
    # the tensors that spiked first, most first; before them, a recurrence's tensors that
    # spiked on the way to the NaN: the repeated product there is what compounds
    recurrent = facts.recurrent_modules

    def in_recurrence(f: Finding) -> bool:
        return any(_inside(f.where or "", m) for m in recurrent)

    # the tensors spiking first: at the spike, else at the first step after it that any did
    # (the whole gradient's baseline may see a spike a step before its tensors' own do)
    serious = [f for f in facts.of(GRADIENT_SPIKE) if f.severity != "info"]
    first = min((f.step for f in serious if start <= f.step < nan_at), default=start)
    tensors = [
        f for f in serious if f.step == first or start < f.step < nan_at and in_recurrence(f)
    ]
    tensors.sort(key=lambda f: (not in_recurrence(f), -f.evidence.get("spike_factor", 0.0)))
    where = [f.where for f in tensors if f.where][:3]
    how = (
        f"the gradient norm spiked {at_once:.3g} times as many times over its level as the "
        f"loss did (the network multiplied it on its way back) and the run was non-finite at "
        f"step {nan_at}"
        if at_once is not None
        else "the gradient norm spiked and the loss rose at every step after it until it went "
        f"non-finite at step {nan_at}"
    )
    return Found(
        f"the gradients exploded at step {start}: {how}"
        + (f", starting in {', '.join(where)}" if where else ""),
        start,
        where,
        {"spike_step": start, "nonfinite_step": nan_at},
        "critical",
    )


# A recurrent tensor whose first gradient stood this many times the norm of all the model's
# weights: at initialisation a gradient is a small fraction of that norm (a loss of a few nats
# spread over every weight); one larger than all the weights together, ten times over, came
# from a recurrence that multiplies it at each time step.
BORN_EXPLODED = 10.0
# Or this many times, when the recurrent module's gradient also stood DOMINANT times every other
# tensor's: a loss on a large scale makes every gradient large, the head's beside it; one that a
# recurrence amplified leaves the rest behind (healthy recurrent runs start under 0.4x the weights).
BORN_EXPLODED_ALONE, DOMINANT = 3.0, 3.0


def _exploded_from_the_start(facts: RunFacts) -> Found | None:
    """At the run's first record, a recurrent module whose gradient (its tensors' together)
    stood ``BORN_EXPLODED`` times the norm of all the weights and carried most of the gradient
    (half its squared norm or more): the recurrence amplified it from the start (a recurrent matrix
    initialised with a gain above 1, an identity recurrence over a long sequence), with no
    growth to see, since it never was small. Most of the gradient, not just a large one: a loss
    on a huge scale makes every tensor's gradient large, the recurrent one among them. Failing
    that, the same through depth (:func:`_amplified_through_depth`)."""
    total, weights = facts.series(GRAD_NORM.name), facts.series(PARAM_NORM.name)
    if total is None or weights is None or not len(total[0]) or not len(weights[0]):
        return None
    first = int(total[0][0])
    at = weights[1][weights[0] == first]
    if not len(at) or not at[0] > 0 or np.isnan(total[1][0]):
        return None
    if np.isinf(total[1][0]):  # it overflowed at once: no tensor's share to read
        return _amplified_through_depth(facts, first, math.inf)
    shrunk = _shrunk_by_clipping_at(facts, first)  # the gradient the model made, not the clip's
    if shrunk > 1.0 and _settled_under_clipping(facts, float(at[0])):
        # clipping held a large first gradient until it settled: a long chain all the same,
        # or a recurrence's own when it never settled (read below)
        chain = _amplified_through_depth(
            facts, first, shrunk * float(total[1][0]) / float(at[0]), True
        )
        if chain is not None or not facts.recurrent_modules or not _clipped_all_run(facts):
            return chain
    # each recurrent module's gradient, its tensors' together (an RNN's input and recurrent
    # weights and biases share what the recurrence amplified)
    squares: dict[str, float] = {}
    tensors: dict[str, tuple[float, str]] = {}
    others = 0.0  # the largest gradient outside every recurrence
    head, at_head = facts.output_layer, 0.0  # the output layer's largest tensor gradient
    for tensor, norm in _family_at(facts, GRAD_NORM, first).items():
        norm *= shrunk
        module = next((m for m in facts.recurrent_modules if _inside(tensor, m)), None)
        if module is not None:
            squares[module] = squares.get(module, 0.0) + norm * norm
            tensors[module] = max(tensors.get(module, (0.0, "")), (norm, tensor))
        else:
            others = max(others, norm)
        if head and _inside(tensor, head):
            at_head = max(at_head, norm)
    largest, module = max(((math.sqrt(v), m) for m, v in squares.items()), default=(0.0, ""))
    ratio = largest / float(at[0])
    whole = float(total[1][0]) * shrunk
    share = (largest / whole) ** 2  # tensors' squared norms add up to the whole
    alone = ratio >= BORN_EXPLODED_ALONE and largest >= DOMINANT * others
    # or far above the output layer's, which a loss on a huge scale makes as large: the input
    # projection a hand-written cell applies at every time step shares what the recurrence
    # amplified, and can carry more of it than the recurrent matrix itself
    above_head = head is not None and largest >= PAST_THE_HEAD * at_head
    # or above the output layer's, the whole standing far above the loss it is the slope
    # of (a loss on a huge scale makes a gradient no larger than itself)
    loss = facts.series(LOSS.name)
    at_loss = loss[1][loss[0] == first] if loss is not None else []
    over_loss = (
        at_head > 0
        and len(at_loss) > 0
        and np.isfinite(at_loss[0])
        and at_loss[0] > 0
        and whole >= BORN_OVER_LOSS * float(at_loss[0])
        and largest >= at_head
    )
    # or, whatever the weights' norm (a recurrent init's gain inflates it too), far above the
    # output layer's and far above the loss
    beyond = (
        above_head
        and at_head > 0
        and len(at_loss) > 0
        and whole >= HELD_OVER_LOSS * float(at_loss[0]) > 0
    )
    if not (ratio >= BORN_EXPLODED or alone or beyond) or not (
        share >= 0.5 or above_head or over_loss
    ):
        return _amplified_through_depth(facts, first, whole / float(at[0]))
    tensor = tensors[module][1]
    return Found(
        f"the gradients exploded through time in the recurrent {module} from the first step: "
        f"its gradient was {largest:.3g} at step {first} (the largest, {tensor}'s, "
        f"{tensors[module][0]:.3g}), {ratio:.3g}x the norm of all the weights and {share:.0%} "
        "of the step's squared gradient norm (a recurrent matrix whose gain is above 1, an "
        "identity recurrence over a long sequence)",
        first,
        [module],
        {"grad_norm": largest, "tensor": tensor, "of_weights": ratio},
        "critical" if facts.broke_at is not None else "warning",
    )


# A first gradient this many times the loss it is the slope of: amplified on its way back (at
# initialisation a gradient stands near its loss; one made large by a loss on a huge scale,
# targets in raw units, stands at or under it).
BORN_OVER_LOSS = 10.0
# With the recurrent gradient PAST_THE_HEAD times the output layer's, this many times the loss
# needs no size against the weights (of the kept runs' recurrent nets, only explosions reach
# both; a healthy one whose output layer gets almost nothing stands 16-31x its loss).
HELD_OVER_LOSS = 50.0
# A recurrent module's gradient at the first step this many times the output layer's: the
# recurrence amplified it (a loss on a huge scale makes the output layer's as large).
PAST_THE_HEAD = 30.0
# The first records whose gradient norms before clipping say whether a start clipping shrank
# lasted: an identity recurrence starts large and settles within a few clipped steps.
CLIPPED_START = 10


# A gradient norm (before any clipping) under this share of its first value, from some step
# to the break, with the loss under its first value: an explosion from the start the run got
# over within a few steps (a training through a bad start the gradient never leaves stays near
# its first value, or above it).
SETTLED_SHARE = 0.1


def _got_over_at_once(facts: RunFacts, found: Found | None) -> Found | None:
    """An explosion from the start (``found``) after which the gradient norm came down under
    ``SETTLED_SHARE`` of its first value and the loss under its first, and stayed so until the
    run broke: an episode the run got over (evidence ``BACK_WITHIN``), which does not explain
    a break long after it."""
    broke = facts.broke_at
    if found is None or found.first_step is None or broke is None:
        return found
    grads = facts.grad_norm_made
    loss = facts.series(LOSS.name)
    if grads is None or loss is None:
        return found
    first = found.first_step
    start_grad, start_loss = grads[1][grads[0] == first], loss[1][loss[0] == first]
    if not len(start_grad) or not len(start_loss) or not np.isfinite(start_grad[0]):
        return found
    g_keep = (grads[0] > first) & (grads[0] < broke)
    l_keep = (loss[0] > first) & (loss[0] < broke)
    above = np.flatnonzero(~(grads[1][g_keep] < SETTLED_SHARE * start_grad[0]))
    settled = grads[0][g_keep][above[-1] + 1 :] if len(above) else grads[0][g_keep]
    if not len(settled):
        return found
    since = int(settled[0])
    after = loss[1][l_keep & (loss[0] >= since)]
    if len(after) and np.all(after < start_loss[0]):
        found.evidence[BACK_WITHIN] = since - first
    return found


def _settled_under_clipping(facts: RunFacts, weights: float) -> bool:
    """Whether the median gradient norm before clipping over the first ``CLIPPED_START``
    records stood under ``BORN_EXPLODED_ALONE`` times the norm of the weights: clipping held a
    large first gradient until it settled, which is what it is for."""
    before = facts.series(GRAD_NORM_PRECLIP.name)
    if before is None:
        return False
    norms = before[1][:CLIPPED_START]
    norms = norms[np.isfinite(norms)]
    return len(norms) > 0 and float(np.median(norms)) < BORN_EXPLODED_ALONE * weights


def _shrunk_by_clipping_at(facts: RunFacts, step: int) -> float:
    """How many times clipping shrank the gradient at ``step``: the norm before clipping over
    the one recorded (1 where not clipped or not known; every tensor shrank by the same)."""
    before, after = facts.series(GRAD_NORM_PRECLIP.name), facts.series(GRAD_NORM.name)
    if before is None or after is None:
        return 1.0
    pre, post = before[1][before[0] == step], after[1][after[0] == step]
    if not len(pre) or not len(post) or not np.isfinite(pre[0]) or not pre[0] > post[0] > 0:
        return 1.0
    return float(pre[0] / post[0])


# Clipping that shrank the gradient this many times or more, at this share of the run's steps or
# more: the run trained on steps of the clip's length alone, whatever the gradient said.
CLIPPED_HARD, CLIPPED_ALWAYS = 10.0, 0.9
CLIPPED_RECORDS = 20  # fewer records with a gradient before clipping say nothing of a whole run
# A gradient that explodes through depth or time stands tens to thousands of times the loss it
# is the slope of (the network multiplies it on its way back); one made large by a loss on a
# huge scale (targets in raw units: pascals, milligrams) stands at the loss or under it. The
# medians over the run, this many times apart, tell them apart.
OVER_ITS_LOSS = 3.0
# In a known recurrence, a gradient clipped as hard at as many steps that stands this many times
# its loss has exploded through time, however it compares with the weights' norm (a GRU's
# first-step gradient 20x its last, clipped 50-200x at every step, at 0.7 of the weights).
RECURRENT_OVER_LOSS = 10.0


def _clipping(
    facts: RunFacts,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """At the records with the gradient read before and after clipping and the weights' norm
    (all finite): the steps, the norm before clipping, how many times clipping shrank it, the
    weights' norm; None with fewer than ``CLIPPED_RECORDS`` of them."""
    before, after = facts.series(GRAD_NORM_PRECLIP.name), facts.series(GRAD_NORM.name)
    weights = facts.series(PARAM_NORM.name)
    if before is None or after is None or weights is None:
        return None
    steps = np.intersect1d(np.intersect1d(before[0], after[0]), weights[0])
    pre = before[1][np.isin(before[0], steps)]
    post = after[1][np.isin(after[0], steps)]
    norm = weights[1][np.isin(weights[0], steps)]
    ok = np.isfinite(pre) & np.isfinite(post) & (post > 0) & (norm > 0)
    if ok.sum() < CLIPPED_RECORDS:
        return None
    return steps[ok], pre[ok], pre[ok] / post[ok], norm[ok]


def _clipped_all_run(facts: RunFacts) -> bool:
    """Whether clipping shrank the gradient ``CLIPPED_HARD`` times or more at ``CLIPPED_ALWAYS``
    of the run's steps: the gradient never settled under it."""
    clipped = _clipping(facts)
    return clipped is not None and float(np.mean(clipped[2] >= CLIPPED_HARD)) >= CLIPPED_ALWAYS


def _held_down_by_clipping(facts: RunFacts) -> Found | None:
    """Clipping that shrank the gradient ``CLIPPED_HARD`` times or more at ``CLIPPED_ALWAYS``
    of the run's steps, the gradient before it standing ``BORN_EXPLODED`` times the norm of all
    the weights (the median over the run): a gradient exploded through time or depth (a
    recurrent gain above 1, an initialisation's gain too large) that clipping hid from the
    loss, which falls on steps of the clip's length, the gradient ``OVER_ITS_LOSS`` times the
    loss or more. A clip threshold set far below a healthy gradient shrinks it as often, at a
    gradient under the weights' norm; inputs fed unscaled (see :func:`_unscaled_inputs`) or
    targets on a huge scale make gradients as large through no amplification."""
    clipped = _clipping(facts)
    if clipped is None or _unscaled_inputs(facts):
        return None
    steps, pre, shrunk, norm = clipped
    share = float(np.mean(shrunk >= CLIPPED_HARD))
    of_weights = float(np.median(pre / norm))
    loss = facts.series(LOSS.name)
    losses = loss[1][np.isin(loss[0], steps) & np.isfinite(loss[1])] if loss else []
    over_loss = float(np.median(pre)) / float(np.median(losses)) if len(losses) else 0.0
    through_time = bool(facts.recurrent_modules) and over_loss >= RECURRENT_OVER_LOSS
    if share < CLIPPED_ALWAYS or (of_weights < BORN_EXPLODED and not through_time):
        return None
    if not over_loss >= OVER_ITS_LOSS:
        return None  # a loss on a huge scale (targets in raw units) makes a gradient as large
    first = int(steps[0])
    where, how = _carried_most(facts)
    return Found(
        f"the gradients exploded {how} and clipping held them down: before clipping the "
        f"gradient norm stood {of_weights:.3g}x the norm of all the weights and "
        f"{over_loss:.3g}x the loss (the run's medians), "
        f"and clipping shrank it {float(np.median(shrunk)):.3g}x at {share:.0%} of the steps: "
        "the run trains on steps of the clip's length, whatever its gradient says",
        first,
        where,
        {
            "of_weights": of_weights,
            "over_loss": over_loss,
            "clipped_share": share,
            "shrunk": float(np.median(shrunk)),
        },
        "critical" if facts.broke_at is not None else "warning",
    )


def _carried_most(facts: RunFacts) -> tuple[list[str], str]:
    """Where a gradient exploded over the whole run: the recurrent module whose tensors carry
    the most of it (their median squared norms together), or, with no recurrence, the module
    of the tensor with the largest median gradient outside the output layer (backpropagation
    multiplies the gradient on its way back, largest where it arrives); with how it exploded."""
    medians = {}
    for name in facts.names:
        if GRAD_NORM.owns(name) and "/" in name:
            values = facts.series(name)[1]
            values = values[np.isfinite(values)]
            if len(values):
                medians[name.split("/", 1)[1]] = float(np.median(values))
    recurrent: dict[str, float] = {}
    for tensor, norm in medians.items():
        module = next((m for m in facts.recurrent_modules if _inside(tensor, m)), None)
        if module is not None:
            recurrent[module] = recurrent.get(module, 0.0) + norm * norm
    if recurrent:
        module = max(recurrent, key=recurrent.get)
        return [module], f"through time in the recurrent {module}"
    head = facts.output_layer
    body = {t: n for t, n in medians.items() if not (head and _inside(t, head))}
    if not body:
        return [], "through depth"
    module = max(body, key=body.get).rpartition(".")[0]
    return ([module] if module else []), "through depth"


# A chain of this many layers or more (each output STEP_GAIN times the one before, the last
# CHAIN_AMPLIFIED times the first) is layers past the edge of chaos whatever the gradient's size:
# a normalisation after it (a LayerNorm before the head) rescales what reaches the loss, so the
# gradient need not be large. Of the kept runs, every chain this long was an explosion (five
# layers can be a design: a healthy SAM decoder's stages, a patch model's embedding).
LONG_CHAIN = 8
# A hidden layer's output at the first step this many times the RMS of the model's input: the
# standard initialisations keep a signal's scale through the layers (Glorot, He); four orders
# of magnitude is layers each multiplying it, and backpropagation multiplies the gradient alike.
AMPLIFIED = 1e4
# Or this many times, with the gradient BORN_EXPLODED times the weights and HELD_OVER_LOSS
# times the loss it is the slope of: a loss on a huge scale (raw targets) makes a large
# gradient, never one far above itself; an output two orders above the input's, feeding such a
# gradient, is a signal amplified on its way (a recurrence scanned in a Python loop, which no
# module's forward is applied for step after step).
HIDDEN_AMPLIFIED = 100.0
# Or layer after layer (``gain_chains``, in the order the model names them). One large output
# can be a layer's design (a temperature, a logit scale); a chain of them is each layer's gain
# above 1 (eight layers at 2.2x the He scale: about 2x a layer; ten at 1.3x it). No overall size
# is asked of the chain: the standard initialisations keep the signal's scale at every layer, so
# none makes a chain at all (none of 246 healthy runs of the bench's sets has one). Nor is the
# gradient asked to stand BORN_EXPLODED times the weights, only BORN_EXPLODED_ALONE times (far
# above a healthy start's, under 0.4x): five convolutions at 3x their gain each (a kernel left
# out of the fan-in) start it at 3.9x.


def _amplified_through_depth(
    facts: RunFacts, first: int, ratio: float, long_only: bool = False
) -> Found | None:
    """At the first record, the gradient ``BORN_EXPLODED`` times the norm of all the weights
    (``ratio``) and a hidden layer's output ``AMPLIFIED`` times the input's RMS: weights
    initialised with too large a gain, so that the signal, and the gradient with it, grows
    layer by layer (the model's output layer, whose logits may be large by design, aside); or
    the gradient ``BORN_EXPLODED_ALONE`` times the weights and a chain of layers each
    ``STEP_GAIN`` times the one before; or, whatever the gradient's size (``long_only``: that
    alone), a chain of ``LONG_CHAIN`` layers or more amplifying ``CHAIN_AMPLIFIED`` times."""
    inputs = facts.series(INPUT_RMS.name)
    if inputs is None or not (inputs[0] == first).any():
        return None
    scale = float(inputs[1][inputs[0] == first][0])
    # the output layer, and what made the logits the loss read (a learnt scale after it)
    heads = {facts.output_layer, *facts.logit_heads}
    layers = [
        (rms, module)
        for module, rms in _family_at(facts, ACT_RMS, first).items()
        if not any(head and _inside(module, head) for head in heads)
    ]
    if not scale > 0 or not layers:
        return None
    # layers that hold weights, in the model's order: an activation between them (a ReLU
    # module halving the RMS) is no layer with a gain, and would break every chain
    weighted = sorted(
        ((act, m) for act, m in layers if f"{GRAD_NORM.name}/{m}.weight" in facts.names),
        key=lambda layer: _natural(layer[1]),
    )
    chain = [max(layers)]
    led = _amplified_layer_by_layer(weighted) or _amplified_along_a_stack(weighted)
    long = len(led) >= LONG_CHAIN and led[-1][0] >= CHAIN_AMPLIFIED * led[0][0]
    risen = [] if long else _risen_along_a_stack(weighted)
    steady = bool(risen)  # a deep stack rising steadily, one layer's noise breaking its chains
    if steady:
        led, long = risen, True
    if (ratio < BORN_EXPLODED_ALONE or long_only) and not long:
        return None
    # or far over its loss, where no chain of layers nor a known recurrence (whose own tests
    # read it through time) is there to name
    amplified = chain[0][0] >= AMPLIFIED * scale or (
        not led
        and not any(_inside(chain[0][1], m) for m in facts.recurrent_modules)
        and chain[0][0] >= HIDDEN_AMPLIFIED * scale
        and _far_over_its_loss(facts, first, ratio)
    )
    if not amplified or ratio < BORN_EXPLODED:
        chain = led
        if not chain:
            return None
    elif led and led[-1] == chain[0]:
        chain = led  # the layers that multiplied the signal, one after another, into it
    act, module = chain[-1]
    where = [m for _, m in chain]
    if len(chain) > 1:
        # placed where the rise began: the layers before the chain that led into it, each no
        # larger than the next (one layer's gain under STEP_GAIN breaks a chain, not a rise)
        start = begins = weighted.index(chain[0])
        while start > 0 and 0 < weighted[start - 1][0] <= weighted[start][0]:
            start -= 1
        where = [m for _, m in weighted[start:begins]] + where
    size = "overflowed" if math.isinf(ratio) else f"was {ratio:.3g}x the norm of all the weights"
    if ratio < BORN_EXPLODED_ALONE:
        size += " (a normalisation after the chain rescales what reaches the loss)"
    recurrent = any(_inside(module, m) for m in facts.recurrent_modules)
    how = (
        f"through time in the recurrent {module}" if recurrent else "through depth"
    ) + " from the first step"
    why = (
        "a recurrent matrix whose gain is above 1: each time step multiplies the signal, and "
        "the gradient on its way back"
        if recurrent
        else "weights initialised with too large a gain: each layer multiplies the signal, and "
        "the gradient on its way back"
    )
    span = layer_span([m for _, m in chain])
    if len(chain) < 2:
        layer_by_layer = ""
    elif steady:
        layer_by_layer = f", rising {act / chain[0][0]:.3g}x almost layer by layer through {span}"
    else:
        layer_by_layer = f", each of {span} at least {STEP_GAIN:g}x the output before it" + (
            f", rising layer by layer from {where[0]}" if where[0] != chain[0][1] else ""
        )
    return Found(
        f"the gradients exploded {how}: {module}'s output had RMS {act:.3g} at step {first}, "
        f"{act / scale:.3g}x the input's{layer_by_layer}, and the gradient {size} ({why})",
        first,
        where,
        {"act_rms": act, "input_rms": scale, "of_weights": ratio},
        "critical" if facts.broke_at is not None else "warning",
    )


def _far_over_its_loss(facts: RunFacts, first: int, ratio: float) -> bool:
    """Whether the gradient at ``first``, ``ratio`` times the norm of all the weights (finite),
    stood ``HELD_OVER_LOSS`` times the loss then or more."""
    loss, weights = facts.series(LOSS.name), facts.series(PARAM_NORM.name)
    if loss is None or weights is None or not math.isfinite(ratio):
        return False
    at_loss, at_weights = loss[1][loss[0] == first], weights[1][weights[0] == first]
    if not len(at_loss) or not len(at_weights) or not np.isfinite(at_loss[0]) or at_loss[0] <= 0:
        return False
    return bool(ratio * at_weights[0] >= HELD_OVER_LOSS * at_loss[0])


def _grown_back_through_a_stack(facts: RunFacts) -> Found | None:
    """At the first record, the weights' gradients in a stack of like layers growing from the
    stack's last layer back to its first (:func:`stack_chains`): a backward pass that multiplies
    the gradient at every layer (weights initialised past the edge of chaos, Poole et al.
    2016), whatever the gradient's overall size."""
    total = facts.series(GRAD_NORM.name)
    if total is None or not len(total[0]):
        return None
    first = int(total[0][0])
    norms = _family_at(facts, GRAD_NORM, first)
    chains = stack_chains(norms)
    if not chains:
        return None
    chain = max(chains, key=lambda c: c[-1][1] / c[0][1])
    where = [tensor.rsplit(".", 1)[0] for tensor, _ in reversed(chain)]
    rise = _rising_into(norms, chain[-1][0])
    rise = _input_layer_exploded(norms, rise[0] if rise else where[0], chain[0][1]) + rise
    grads = [norm for _, norm in chain]
    stepwise = all(b >= STEP_GAIN * a for a, b in zip(grads, grads[1:], strict=False))
    how = (
        f"each layer's weight gradient in {layer_span(where)} stood at least {STEP_GAIN:g}x "
        "the one after it"
        if stepwise
        else f"the weight gradients of {layer_span(where)} rose back through the stack almost "
        "layer by layer"
    )
    return Found(
        f"the gradients exploded through depth from the first step: at step {first} {how}, "
        f"{where[0]}'s {chain[-1][1] / chain[0][1]:.3g}x {where[-1]}'s (weights "
        "initialised with too large a gain: each layer multiplies the gradient on its way back)"
        + (f", and rising still into {layer_span(rise)} before it" if rise else ""),
        first,
        rise + where,
        {"grad_norm": chain[-1][1], "last_layer_grad_norm": chain[0][1], "layers": len(chain)},
        "critical" if facts.broke_at is not None else "warning",
    )


def _input_layer_exploded(norms: dict[str, float], top: str, last: float) -> list[str]:
    """The stack's first layer, when the rise reached the layer just after it (``top``, a
    module) and its weight gradient stands ``CHAIN_AMPLIFIED`` times the stack's last
    (``last``) or more: it takes the model's input, of another width, so its gradient's norm
    does not compare with the next layer's, but it carries the gradient exploded as much."""
    stack = next(
        (s for s in like_layers(norms).values() if f"{top}.weight" in dict(s).values()), []
    )
    # the stack's layers in order (a Sequential's, with activations between, go 0, 2, 4 ...)
    ordered = [t for _, t in sorted(stack)]
    if len(ordered) < 2 or ordered[1] != f"{top}.weight" or min(stack)[0] != 0:
        return []
    first = ordered[0]
    return [first.rsplit(".", 1)[0]] if norms[first] >= CHAIN_AMPLIFIED * last else []


def _rising_into(norms: dict[str, float], top: str) -> list[str]:
    """The layers of ``top``'s stack before it (toward the input) whose weight gradients went
    on rising into it, each no smaller than the one after it: where the rise began, when one
    layer's gain under ``STEP_GAIN`` broke the chain there (a rise, not a chain). Modules,
    input first."""
    stack = next((s for s in like_layers(norms).values() if top in dict(s).values()), [])
    index = next(i for i, t in stack if t == top)
    rise, after = [], norms[top]
    for _, tensor in sorted(((i, t) for i, t in stack if i < index), reverse=True):
        if not norms[tensor] >= after:
            break
        rise.append(tensor.rsplit(".", 1)[0])
        after = norms[tensor]
    return rise[::-1]


def _amplified_layer_by_layer(layers: list[tuple[float, str]]) -> list[tuple[float, str]]:
    """The first chain of ``CHAIN`` layers or more, in the order the model names them, each
    output ``STEP_GAIN`` times the one before: its (output RMS, module)s, first to last (none
    when there is no chain)."""
    ordered = sorted(layers, key=lambda layer: _natural(layer[1]))
    acts = [act for act, _ in ordered]
    return next((ordered[i:j] for i, j in gain_chains(acts)), [])


def _amplified_along_a_stack(layers: list[tuple[float, str]]) -> list[tuple[float, str]]:
    """The first chain (``gain_chains``) along a stack of like layers (``blocks.0.conv1`` ..
    ``blocks.11.conv1``: one name but for the index), in the order of the index: a residual
    stack whose every block multiplies the stream (a residual branch scaled the wrong way) shows
    it at each block's same layer, where the layers between (a block's second convolution,
    reading the branch alone) break a chain read over every layer in turn."""
    act = {module: value for value, module in layers}
    stacks = like_layers(act)
    for stack in sorted(stacks.values(), key=lambda s: _natural(min(s)[1])):
        stack.sort()
        for i, j in gain_chains([act[module] for _, module in stack]):
            return [(act[module], module) for _, module in stack[i:j]]
    return []


def _risen_along_a_stack(layers: list[tuple[float, str]]) -> list[tuple[float, str]]:
    """A stack of like layers (one name but for the index) whose outputs rise steadily with
    depth (:func:`rises_steadily`): its (output RMS, module)s from the first to the largest (none
    when no stack does). A deep stack initialised with too large a gain multiplies the signal at
    every layer, by a factor each random matrix draws a little differently."""
    act = {module: value for value, module in layers}
    for stack in sorted(like_layers(act).values(), key=lambda s: _natural(min(s)[1])):
        stack.sort()
        values = [act[module] for _, module in stack]
        if rises_steadily(values):
            top = int(np.argmax(values))
            return [(act[module], module) for _, module in stack[: top + 1]]
    return []


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


def _bursts_through_time(facts: RunFacts) -> Found | None:
    """No gradient grew for long, and the loss came back between bursts, but the gradient
    spikes in the ``EXPLOSION_LEAD`` steps before the first NaN were largest in a recurrence,
    and a replay of the NaN's step found its forward pass made it there, from finite inputs:
    the gradients explode through time in bursts (the "cliffs" of Pascanu et al. 2013) until
    an update leaves the recurrent weights that overflow."""
    nonfinite = facts.of(NONFINITE)
    if not nonfinite:
        return None
    nan_at, origin = nonfinite[0].step, nonfinite[0].evidence.get("forward_origin") or {}
    producer = origin.get("module") if origin.get("replayed") else None
    around = [m for m in facts.recurrent_modules if producer and _inside(producer, m)]
    spikes = [
        (f.step, f.where, f.evidence.get("grad_norm", 0.0))
        for f in facts.of(GRADIENT_SPIKE)
        if f.severity != "info" and f.where and nan_at - EXPLOSION_LEAD <= f.step < nan_at
    ]
    if not around:
        return None
    spikes = spikes or _bursts_in_the_series(facts, nan_at)
    if not spikes:
        return None
    _, where, norm = max(spikes, key=lambda s: s[2])
    module = around[0]
    # the largest spike in that recurrence, or in another module it calls at every time step
    # (a factorised recurrence u(v(h)): the spike in v, the overflow in u)
    if not any(_inside(where, m) for m in [module, *facts.recurrent_modules]):
        return None
    start = _first_cliff(facts, min(step for step, _, _ in spikes))
    return Found(
        f"the gradients exploded through time in the recurrent {module}: from step {start} "
        f"its gradient spiked ({where} up to {norm:.3g}), more than any other, and at step "
        f"{nan_at} its forward pass overflowed with the weights those updates left",
        start,
        [module],
        {"spike_step": start, "nonfinite_step": nan_at, "largest_spike": where},
        "critical",
    )


def _bursts_in_the_series(facts: RunFacts, nan_at: int) -> list[tuple[int, str, float]]:
    """The first burst of the gradient norm (see :func:`_first_burst`) within the
    ``EXPLOSION_LEAD`` steps before the first NaN, as (step, the tensor with the largest
    gradient there, its norm): what the spike detectors see once their warm-up has passed,
    read from the series for a run that broke before that."""
    step = _first_burst(facts, nan_at - 1)
    if step is None or step < nan_at - EXPLOSION_LEAD:
        return []
    tensors = _family_at(facts, GRAD_NORM, step)
    if not tensors:
        return []
    where = max(tensors, key=lambda name: tensors[name])
    return [(step, where, tensors[where])]


# Steps between a recurrence's bursts of the gradient that make them one series of cliffs.
BURST_GAP = 5 * EXPLOSION_LEAD
GROWING_BURSTS = 3  # bursts, each larger than the one before, that make a series


def _growing_bursts(facts: RunFacts) -> Found | None:
    """The gradient norm burst (``BURST`` times the median of the 20 readings before) at least
    ``GROWING_BURSTS`` times, each burst larger than the one before and within ``BURST_GAP``
    steps of it, the last leading into the first NaN (within ``EXPLOSION_LEAD`` steps), the loss
    coming back between them: gradients exploding in bursts (a message-passing net summing
    without a mean, a layer whose gain passed one), whatever the architecture. Dated to the
    first burst of the series, placed at the tensors that spiked there, most first."""
    nonfinite = facts.of(NONFINITE)
    grad = facts.series(GRAD_NORM.name)
    if not nonfinite or grad is None:
        return None
    nan_at = nonfinite[0].step
    steps, norms = grad
    keep = (steps < nan_at) & np.isfinite(norms)
    steps, norms = steps[keep], norms[keep]
    if len(norms) <= 20:
        return None
    before = np.median(sliding_window_view(norms[:-1], 20), axis=1)  # the 20 before each
    at = np.flatnonzero(norms[20:] >= BURST * before) + 20
    bursts = [(int(steps[i]), float(norms[i])) for i in at]
    if not bursts or nan_at - bursts[-1][0] > EXPLOSION_LEAD:
        return None
    series = [bursts[-1]]  # back from the last, while each one before was smaller and near
    for step, norm in reversed(bursts[:-1]):
        if series[0][0] - step > BURST_GAP or not norm < series[0][1]:
            break
        series.insert(0, (step, norm))
    if len(series) < GROWING_BURSTS:
        return None
    start = series[0][0]
    spiked = [f for f in facts.of(GRADIENT_SPIKE) if f.step == start and f.where]
    spiked.sort(key=lambda f: -f.evidence.get("spike_factor", 0.0))
    where = [f.where for f in spiked][:3]
    found = Found(
        f"the gradients exploded in {len(series)} bursts, each larger than the last (from "
        f"{series[0][1]:.3g} at step {start} to {series[-1][1]:.3g} at step {series[-1][0]}), "
        f"until they went non-finite at step {nan_at}"
        + (f", starting in {', '.join(where)}" if where else ""),
        start,
        where,
        {"bursts": [list(b) for b in series], "nonfinite_step": nan_at},
        "critical",
    )
    fell = _fell_without_bound(facts)
    if fell is not None and fell.first_step is not None and fell.first_step <= start:
        # a loss with no minimum (nll_loss on raw scores) drives its logits without end, and
        # every gradient through them grows with them
        found.consequence_of = (
            f"the loss fell below zero without bound from step {fell.first_step}: the "
            "gradients grew with the logits it drove"
        )
    return found


def _first_cliff(facts: RunFacts, step: int) -> int:
    """The first of the gradient bursts (spikes of the gradient norm, or of a tensor's, not
    info) before ``step`` that follow one another ``BURST_GAP`` steps apart or less: the
    cliffs a recurrence fell from before the one that overflowed."""
    bursts = {f.step for f in facts.of(GRAD_NORM_SPIKE, GRADIENT_SPIKE) if f.severity != "info"}
    for earlier in sorted((b for b in bursts if b < step), reverse=True):
        if step - earlier > BURST_GAP:
            break
        step = earlier
    return step


def _leading_into(facts: RunFacts, until: int, *kinds: FindingKind) -> list[int]:
    """Steps of the spikes of ``kinds`` (not info) in the ``EXPLOSION_LEAD`` steps up to
    ``until``: those that led into it (a gradient-norm spike there: the break was an
    explosion)."""
    return [
        f.step
        for f in facts.of(*kinds)
        if f.severity != "info" and until - EXPLOSION_LEAD <= f.step <= until
    ]


def _finite_until(facts: RunFacts, name: str, until: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A series' finite values up to step ``until`` (steps, values), or None without it."""
    series = facts.series(name)
    if series is None:
        return None
    steps, values = series
    keep = np.isfinite(values) & (steps <= until)
    return steps[keep], values[keep]


def _first_burst(facts: RunFacts, until: int) -> int | None:
    """The first step up to ``until`` whose gradient norm stood ``BURST`` times above the median
    of the (up to 64) before it, three at least: a burst no weight decay makes, so weights grown
    from then on grew by its update (momentum spreads it over the next steps), not by
    something that scales every weight."""
    grad = _finite_until(facts, GRAD_NORM.name, until)
    if grad is None:
        return None
    steps, values = grad
    n, window = len(values), 64
    if n < 4:
        return None
    baseline = [float(np.median(values[:k])) for k in range(3, min(n, window))]
    if n > window:
        baseline += list(np.median(sliding_window_view(values[:-1], window), axis=1))
    hits = np.flatnonzero(values[3:] > BURST * np.asarray(baseline))
    return int(steps[3 + hits[0]]) if hits.size else None


def _before_explosion(facts: RunFacts, until: int) -> int:
    """``until``, or the step before the spikes that led into it: those are the explosion
    itself, and the weights it moved (recorded after the update of their step) say nothing of
    what came before."""
    leading = _leading_into(facts, until, LOSS_SPIKE, GRAD_NORM_SPIKE)
    return min(leading, default=until + 1) - 1


def _runaway_weights(facts: RunFacts) -> tuple[str, int, float, float] | None:
    """The weight tensor whose norm grew geometrically (a steady rate in log space over each
    third of the ``RUNAWAY_SPAN`` steps before the loss began to climb or the run broke, not
    slowing: growth out of a small start, or a learnt direction, slows as it goes) by
    ``RUNAWAY_GROWTH`` times or more, while the loss set no new best level late in that span
    (or by ``RUNAWAY_ANYWAY`` times, whatever the loss did) and the learning rate did not rise:
    (parameter, the step its growth began, the growth, the share of the weight tensors that
    grew so), the fastest such."""
    trouble = [s for s in (facts.climbing_from, facts.broke_at) if s is not None]
    if not trouble or _lr_rose(facts, min(trouble)):
        return None
    improving = _improving(facts, min(trouble))
    until = _before_explosion(facts, min(trouble))
    # weights multiply what flows through them (a shift, a learnt log-scale or a temperature
    # can track drifting data geometrically without amplifying anything)
    weights = [
        n.split("/", 1)[1]
        for n in facts.names
        if "/" in n and PARAM_NORM.owns(n) and n.endswith("weight")
    ]
    runaway = {}  # parameter -> (rate, began, growth) of each weight tensor growing so
    for name in weights:
        grown = _geometric(*facts.series(f"{PARAM_NORM.name}/{name}"), until)
        if grown is not None:
            runaway[name] = grown
    share = len(runaway) / len(weights) if weights else 0.0
    # Logits found diverging grow with the weights of the module that computes them: that
    # mechanism has its own name (before the trouble, it is the cause), unless that module's
    # weights held still while another's ran away upstream. A module with no weight of its
    # own is a head tied to the embedding: whose growth is whose cannot be told.
    pushed, _ = _pushes(facts)
    if len(pushed) and pushed[0] <= until:
        return None  # the loss asks for larger logits: weights grow to give them
    for f in facts.of(OUTPUT_LOGIT_DIVERGENCE, ATTENTION_LOGIT_GROWTH):
        module = f.where or ""
        own = [n for n in weights if _inside(n, module)]
        if f.severity == "info" or (own and not any(n in runaway for n in own)):
            continue
        if f.step <= until:
            return None
        for n in own:
            runaway.pop(n, None)
    if improving:
        # a loss still improving: only growth no learnt direction reaches runs away
        runaway = {n: g for n, g in runaway.items() if g[2] >= RUNAWAY_ANYWAY}
    if not runaway:
        return None
    name = max(runaway, key=lambda n: runaway[n][0])
    _, began, growth = runaway[name]
    return name, began, growth, share


def _geometric(
    steps: np.ndarray, values: np.ndarray, until: int
) -> tuple[float, int, float] | None:
    """(log rate per step, the step the growth began, the growth) of a norm that grew
    ``RUNAWAY_GROWTH`` times or more over the ``RUNAWAY_SPAN`` steps up to ``until`` at a
    steady rate in log space (each third at least 0.7 of the first's)."""
    keep = np.isfinite(values) & (values > 0) & (steps <= until)
    steps, logs = steps[keep], np.log(values[keep])
    window = steps >= until - RUNAWAY_SPAN
    if window.sum() < 9 or steps[window][-1] - steps[window][0] < 0.8 * RUNAWAY_SPAN:
        return None
    s, v = steps[window], logs[window]
    if v[-1] - v[0] < math.log(RUNAWAY_GROWTH):
        return None
    thirds = np.array_split(np.arange(len(s)), 3)
    rates = [(v[i[-1]] - v[i[0]]) / (s[i[-1]] - s[i[0]]) for i in thirds]
    if min(rates) <= 0 or min(rates[1:]) < 0.7 * rates[0]:
        return None
    rate = float((v[-1] - v[0]) / (s[-1] - s[0]))
    return rate, _growing_since(steps, logs, int(s[0]), rate), float(math.exp(v[-1] - v[0]))


def _growing_since(steps: np.ndarray, logs: np.ndarray, start: int, rate: float) -> int:
    """Back from ``start``, a quarter span at a time, while a log norm still grew at half
    ``rate`` or more: the step its growth began."""
    chunk = RUNAWAY_SPAN // 4
    while start - chunk >= steps[0]:
        a, b = np.searchsorted(steps, start - chunk), np.searchsorted(steps, start)
        b = min(b, len(steps) - 1)
        if b <= a or (logs[b] - logs[a]) / (steps[b] - steps[a]) < rate / 2:
            break
        start = int(steps[a])
    return start


def _improving(facts: RunFacts, until: int) -> bool:
    """The loss set its best sustained level within the last third of the ``RUNAWAY_SPAN``
    steps before ``until`` (or there is no loss to say): still learning."""
    best = _best_before_trouble(facts)
    return best is None or best > until - RUNAWAY_SPAN // 3


def _lr_rose(facts: RunFacts, until: int, rise: float = 1.2) -> bool:
    """Some group's learning rate rose ``rise`` times or more over the ``RUNAWAY_SPAN`` steps
    before ``until`` (weights then grow with the step size)."""
    for steps, values in facts.learning_rates:
        # positive readings: a warm-up's first rate of 0 is no level to rise from
        span = values[(steps <= until) & (steps >= until - RUNAWAY_SPAN) & _positive(values)]
        if len(span) >= 2 and span.max() >= rise * span[0]:
            return True
    return False


def _recurrent_origin(facts: RunFacts, found: Found) -> tuple[str, float] | None:
    """The recurrent module (``nn.RNN``/``LSTM``/``GRU``, a cell, or a module the forward applied
    in a recurrence, listed by the Monitor in the run's config) whose own gradient grew
    ``RECURRENT_GROWTH`` times by the growth finding, when the finding named a tensor outside
    every recurrent module. Gradients explode through time inside a recurrence (Pascanu et al.
    2013); the embedding or convolution before it gets the largest gradient only because every
    step of the recurrence adds to it."""
    modules = facts.recurrent_modules
    named = found.where[0] if found.where else ""
    if not modules or any(_inside(named, m) for m in modules):
        return None
    best = None
    for module in modules:
        prefix = GRAD_NORM.key(module + ".")
        factors = [
            _grew_by(facts, name, found.first_step)
            for name in facts.names
            if name.startswith(prefix)
        ]
        factor = max(factors, default=0.0)
        if factor >= RECURRENT_GROWTH and (best is None or factor > best[1]):
            best = (module, factor)
    return best


def _inside(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")


def _grew_by(facts: RunFacts, name: str, until: int) -> float:
    """How many times a series' largest value over the last 3 readings up to ``until`` stands
    above its median over the first half of the span (0 when there is too little to say)."""
    steps, values = facts.series(name)
    values = values[np.isfinite(values) & (steps <= until)]
    if len(values) < 6:
        return 0.0
    early = float(np.median(values[: len(values) // 2]))
    return float(values[-3:].max() / early) if early > 0 else 0.0


def _grown_everywhere(
    found: Found,
    facts: RunFacts,
    until: int | None,
    what: str,
    growth: list[tuple[float, str]] | None = None,
) -> bool:
    """Mark ``found`` a consequence when the median weight tensor grew ``EVERYWHERE_GROWTH``
    times by ``until`` (``growth``: :func:`_weight_growth`'s, read here when not given),
    compounding (:func:`_later_share`: a weight decay of the wrong sign scales every weight by
    the same factor each step, and ``what`` grew with them)."""
    if until is None:
        return False
    growth = _weight_growth(facts, until) if growth is None else growth
    grown = [g for g, _ in growth]
    # the median tensor; of one or two, the one that grew least (a model with a single
    # trained layer: an echo-state net's readout)
    everywhere = float(np.median(grown) if len(grown) >= 3 else min(grown, default=1.0))
    if everywhere < EVERYWHERE_GROWTH:
        return False
    shares = [s for _, name in growth if (s := _later_share(facts, name, until)) is not None]
    if shares and float(np.median(shares)) < COMPOUNDING:
        return False  # grown at once and slowing since: steps too large for a small init
    which = "the median tensor" if len(grown) >= 3 else "every trained weight"
    found.consequence_of = (
        f"the weights grew {everywhere:.3g}x everywhere ({which}): {what} grew with them; "
        "look for what scales every weight (a weight decay of the wrong sign)"
    )
    found.evidence["median_weight_growth"] = everywhere
    return True


# The largest logit, from a drift's first finding to the end, within this share of its median:
# held at a level, not drifting on (a logit drifting for good grows by multiples of itself).
PINNED = 0.5


def _pinned_by_a_collapse(facts: RunFacts, began: int) -> str | None:
    """Why a drift found at ``began`` is a softmax collapse's, when the logits rose to a level
    they then held to the end of a run that did not break (the largest within ``PINNED`` of its
    median at every reading from ``began``) while rows stayed collapsed: logits bounded by
    construction (a cosine head times its scale, a clamped temperature) that reached their
    bound, saturating the softmax. A divergence has no bound; the collapse is the harm here."""
    series = facts.series(OUTPUT_LOGIT_MAX.name)
    collapse = [f for f in facts.of(SOFTMAX_COLLAPSE_KIND) if f.severity != "info"]
    if series is None or not collapse or facts.broke_at is not None:
        return None
    steps, values = series
    held = values[steps >= began]
    if len(held) < 2 * RECEDED_READINGS or not np.isfinite(held).all():
        return None
    level = float(np.median(held))
    if not level > 0 or (held.max() - held.min()) > PINNED * level:
        return None
    shares = facts.series(SOFTMAX_COLLAPSE.name)
    if shares is None or not (shares[1][-RECEDED_READINGS:] >= _collapse_bar(facts)).any():
        return None  # the collapse receded: it does not explain logits held to the end
    return (
        f"the logits rose to a level they held to the end (the largest within "
        f"{(held.max() - held.min()) / level:.0%} of {level:.3g} from step {began}) while rows "
        f"stayed collapsed (softmax collapse from step {collapse[0].step}): logits at their "
        "bound, saturating the softmax, not drifting without end"
    )


# A number the logits are multiplied by after their layer, grown this many times since its first
# reading: a temperature annealed (or a scale ramped) by a schedule set outside the model.
SCALED = 4.0


def _grown_by_a_fixed_scale(facts: RunFacts, began: int) -> str | None:
    """Why a drift found at ``began`` is a softmax collapse's, when the logits are their
    layer's output times a plain number (``output_scale``: ``logits / T``) that had grown
    ``SCALED`` times or more by then, as much as the largest logit had at least in log terms
    (half of it or more), while rows collapsed: the number (a temperature annealed too fast)
    made them large, and the harm a temperature does is the collapse."""
    scales, logits = facts.series(OUTPUT_SCALE.name), facts.series(OUTPUT_LOGIT_MAX.name)
    collapse = [f for f in facts.of(SOFTMAX_COLLAPSE_KIND) if f.severity != "info"]
    if scales is None or logits is None or not collapse:
        return None
    upto, grew = scales[0] <= began, logits[0] <= began
    if not upto.any() or not grew.any():
        return None
    first, then = float(scales[1][0]), float(scales[1][upto][-1])
    held = scales[1][upto]
    if (
        first >= FIXED_TEMPERATURE
        and (np.abs(held - first) <= 0.01 * first).all()
        and _out_of_range_at_once(facts)
    ):
        # the number was as large from the first reading on, and the logits were never in
        # range: they were born that large, no drift made them
        return (
            f"the logits are their layer's output times a plain number, {first:.3g} from the "
            f"first reading (a temperature applied the wrong way: logits / T with T typed as "
            f"1/T): they were that large from the start, and rows collapsed (softmax collapse "
            f"from step {collapse[0].step}): the temperature is the fault"
        )
    start, top = float(logits[1][0]), float(logits[1][grew][-1])
    if not (first > 0 and then >= SCALED * first and start > 0 and top > start):
        return None
    if math.log(then / first) < 0.5 * math.log(top / start):
        return None  # the layer's own output grew more than the number: its own drift
    return (
        f"the logits are their layer's output times a plain number, {first:.3g} at first and "
        f"{then:.3g} by step {began} (a temperature annealed by a schedule outside the model: "
        f"logits / T): they grew by it, and rows collapsed (softmax collapse from step "
        f"{collapse[0].step}): the temperature is the fault"
    )


def _out_of_range_at_once(facts: RunFacts) -> bool:
    """Whether the log-partition's first reading already stood past the limit the drift
    detector judged it by (its first finding's ``lse_limit``)."""
    drifts, lse = facts.of(OUTPUT_LOGIT_DIVERGENCE), facts.series(LOGIT_LSE_MEAN.name)
    limit = drifts[0].evidence.get("lse_limit") if drifts else None
    if not isinstance(limit, int | float) or lse is None or not len(lse[1]):
        return False
    return bool(abs(lse[1][0]) > limit)


def _output_logits(facts: RunFacts) -> Found | None:
    """Output-logit divergence, unless every weight had grown by then (the logits then grow
    because the weights do). The output layer's weights running away (a decay or penalty of
    the wrong sign on the head) is one too, from when they began, logits read or not: the
    logits are those weights times features that held still; in a run whose outputs were never
    read as logits, only beside a finding of the detector."""
    found = _scaled_head(
        facts, _located((OUTPUT_LOGIT_DIVERGENCE,), "output-logit divergence")(facts)
    )
    # no finding and no logits ever read (no cross-entropy, nll_loss or log_softmax): a
    # regressor's head, whose weights grow with whatever drives the loss, makes no logits
    logits = found is not None or facts.series(LOGIT_LSE_MEAN.name) is not None
    head = _output_layer_ran_away(facts) if logits else None
    if head is not None:
        layer, began, factor = head
        ran_away = (
            f"the weights of the output layer {layer} grew {factor:.3g}x from step {began}, far "
            "more than any other, while the loss set no new best: the logits grow with them "
            "(look for a decay or penalty of the wrong sign on the head)"
        )
        evidence = {"runaway_weights": {"module": layer, "began": began, "factor": factor}}
        if found is None:
            found = Found(ran_away, began, [layer], evidence, "warning")
        elif found.first_step is None or began < found.first_step:
            found.first_step = began
            found.where = [layer] + [w for w in found.where if w != layer]
            found.summary += f"; {ran_away}"
            found.evidence.update(evidence)
        if _fell_without_bound(facts) is not None:
            found.evidence[UNBOUNDED] = True  # a loss with no minimum drove them
        skipped = _overflowing_from_the_start(facts, began)
        if skipped is not None:
            found.consequence_of = (
                f"the GradScaler skipped every one of the {skipped} steps before the weights "
                "grew (more than its search for a scale: the gradients overflow float16 "
                "unscaled), and the few steps it took after threw them"
            )
        return found
    if found is None:
        return _logits_driven_by_the_head_rate(facts) or _fell_without_bound(facts)
    if found.first_step is None:
        return found
    first = found.evidence.get("first")
    clear = first.get(PREVIOUS_READING) if isinstance(first, dict) else None
    spike = _thrown_by_a_spike(facts, found.first_step, clear if isinstance(clear, int) else None)
    if spike is None and isinstance(clear, int):
        spike, clear = (
            _risen_at_a_spike(facts, found.first_step, clear)
            or _quickened_by_a_spike(facts, found.first_step)
            or (None, clear)
        )
    if spike is not None and clear is not None:
        found.consequence_of = (
            f"the logits were in range at step {clear}, before the gradient spike at step "
            f"{spike}, and drifted from the step after: its update threw them"
        )
        return found
    burst = _burst_before(facts, found.first_step)
    if burst is not None and clear is not None and clear <= burst[0] < found.first_step:
        found.consequence_of = (
            f"the logits were in range at step {clear}, before {_burst_said(burst)}, and "
            f"drifted from step {found.first_step}: the burst's updates threw them"
        )
        return found
    # what a climb between two readings threw, unless one group's own rate may have made the
    # climb through the very logits read (a head trained far faster than the rest)
    before = clear if isinstance(clear, int) and not _rates_set_apart(facts) else None
    climb = _transient_around(facts, found.first_step, before)
    if climb is not None and clear is not None:
        found.consequence_of = (
            f"the logits were in range at step {clear} and drifted only during the climb of "
            f"step {climb}, which the run came all the way back from: the climb threw them"
        )
        return found
    pinned = _pinned_by_a_collapse(facts, found.first_step)
    tempered = _grown_by_a_fixed_scale(facts, found.first_step)
    if pinned is not None or tempered is not None:
        found.consequence_of = pinned or tempered
        return found
    steps, _ = _pushes(facts)
    if len(steps) and steps[0] <= found.first_step:
        # the loss raises the logits itself, from its first such reading on (their drift
        # confirms it later): the weights grew to serve it, not the other way round
        began, push = int(steps[0]), _logits_pushed_up(facts, found.first_step)
        found.summary += (
            f"; the loss's own gradient pushes every logit up from step {began} ({push:.2g} "
            "of it along their common shift, which no loss of the softmax alone moves): a "
            "term rewards larger logits (a z-loss or logit penalty of the wrong sign, or "
            "nll_loss given raw scores with no log_softmax before it)"
        )
        found.evidence[OUTPUT_SHIFT_GRADIENT.name] = push
        found.evidence["pushed_from"] = began
        found.first_step = min(found.first_step, began)
        return found
    outside = facts.series(OUTPUT_TARGETS_OUTSIDE.name)
    read = np.flatnonzero(outside[1] > 0) if outside is not None else []
    if len(read):
        # targets the loss has no minimum on, from their first reading: the logits ran off
        # to serve them
        began, share = int(outside[0][read[0]]), float(outside[1][read[0]])
        found.summary += (
            f"; {share:.2%} of the binary cross-entropy's targets lie outside [0, 1] from step "
            f"{began} (a label smoothing of the wrong sign, multi-hot counts): no finite logit "
            "minimises the loss on them, and it pushes those logits on for good"
        )
        found.evidence[OUTPUT_TARGETS_OUTSIDE.name] = share
        found.evidence["targets_outside_from"] = began
        found.first_step = min(found.first_step, began)
        return found
    below = _below_zero_by(facts, found.first_step)
    if below is not None:
        # a loss below zero rewards the logits' growth itself: the weights grew to serve it
        found.summary += (
            f"; the loss went below zero from step {below}, which no cross-entropy of "
            "probabilities against targets in [0, 1] does: the targets (label smoothing "
            "typed with the wrong sign or past 1) or a term of the wrong sign reward ever "
            "larger logits"
        )
        found.evidence.update(negative_loss_from=below, **{UNBOUNDED: True})
        return found
    fell = _fell_without_bound(facts)
    if fell is not None:
        # a loss with no minimum, the output growing to lower it: every weight grew to serve it
        found.summary += f"; {fell.summary}"
        found.evidence.update(fell.evidence, fell_from=fell.first_step)
        found.first_step = min(found.first_step, fell.first_step)
        return found
    _grown_everywhere(found, facts, found.first_step, "the logits")
    rate = _output_updates_too_large(facts, found)
    if rate is not None:
        step, ratio = rate
        found.summary += (
            f"; the output layer's updates were too large for its weights from step {step} "
            f"(update ratio {ratio:.3g}): its learning rate drives the drift"
        )
        found.evidence["output_update_ratio"] = ratio
    return found


def _fell_without_bound(facts: RunFacts) -> Found | None:
    """The loss fell below zero at a rate that did not slow, to ``ONE_OFF`` times its first
    value's size below it where it ended (its last ``ENDED_OVER`` losses), and at least
    ``ONE_OFF`` nats (a log-likelihood fitting its noise goes a few below zero: a loss that
    starts near 0 says nothing of its scale), and was still falling there (in a run that
    broke, read up to the break, at its lowest into it), while the
    output layer's weights grew ``RUNAWAY_GROWTH`` times and were still growing: an objective
    with no minimum (a margin or a log-likelihood that lost its softplus or its normaliser, a
    term of the wrong sign), which the output runs off to infinity to reach. Read from the
    loss and the weights alone, for a loss no interception reads (one written by hand). A loss
    with a floor (a Gaussian likelihood fitting its noise) slows as it nears it."""
    layer, loss = facts.output_layer, facts.series(LOSS.name)
    weight = facts.series(f"{PARAM_NORM.name}/{layer}.weight")
    if layer is None or loss is None or weight is None:
        return None
    steps, values = loss
    broke = facts.broke_at
    if broke is not None:
        # a run that broke as it fell (to -inf) is read up to the break, falling into it
        steps, values = steps[steps < broke], values[steps < broke]
        weight = (weight[0][weight[0] < broke], weight[1][weight[0] < broke])
        if not len(values) or values[-1] > values.min():
            return None
    if len(values) < 40 or not np.isfinite(values).all():
        return None
    q = _quarter_medians(values)
    falls = -np.diff(q)  # how far each quarter's median fell below the one before
    if not (falls > 0).all() or falls[-1] < 0.5 * falls[-2] or q[-1] >= 0:
        return None
    ended = float(np.median(values[-ENDED_OVER:]))
    # still falling at the end: below the losses a few of those spans before (a batch's loss
    # swings by a share of its size; a fall that did not slow clears that over 30 steps)
    if ended > -ONE_OFF * max(abs(values[0]), 1.0) or ended >= np.median(
        values[-4 * ENDED_OVER : -2 * ENDED_OVER]
    ):
        return None  # not far below where it began by the end, or no longer falling there
    # the output layer's weights, or failing them its outputs (every layer before it may
    # carry the growth a little each: ONE_OFF times, as the loss is asked; a variance head
    # shrinking to its floor moves its outputs a few times over), grown and still growing
    grown, what = _grew_in_quarters(weight[1], RUNAWAY_GROWTH), "weight"
    outputs = facts.series(f"{ACT_RMS.name}/{layer}")
    if grown is None and outputs is not None:
        grown, what = _grew_in_quarters(outputs[1], ONE_OFF, fewest=4), "output"
    if grown is None:
        return None
    below = steps[values < 0]
    began = int(below[0]) if len(below) else int(steps[0])
    return Found(
        f"the loss fell below zero from step {began} without slowing, to {values[-1]:.4g} "
        f"(from {values[0]:.4g}), while the {what}s of the output layer {layer} grew "
        f"{grown:.3g}x and kept growing: a loss with no minimum (a margin or "
        "log-likelihood that lost its softplus or normaliser, a term of the wrong sign), "
        "which the outputs grow without end to lower",
        began,
        [layer],
        {"loss_end": float(values[-1]), f"output_{what}_growth": grown, UNBOUNDED: True},
        "warning",
    )


# Evidence key of a loss with no minimum (see :func:`_fell_without_bound`): its gradient drives
# every weight it reaches without end, not its output layer's alone.
UNBOUNDED = "unbounded"


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


def _output_updates_too_large(facts: RunFacts, found: Found) -> tuple[int, float] | None:
    """The first too-large update ratio (step, ratio) found on a parameter of the module the
    logits come from, by the time they were found drifting: a learning rate set too high for
    the head moves its weights, and with them the logits."""
    heads = [w for w in found.where if w]
    if found.first_step is None or not heads:
        return None
    for f in facts.of(UPDATE_RATIO_OUT_OF_RANGE):
        on_head = f.where and any(_inside(f.where, head) for head in heads)
        if on_head and _too_large(f) and f.severity != "info" and f.step <= found.first_step:
            return f.step, float(f.evidence.get("update_ratio", math.nan))
    return None


def _logits_pushed_up(facts: RunFacts, until: float) -> float | None:
    """The strongest push by step ``until`` (see :func:`_pushes`), if there was one."""
    steps, values = _pushes(facts)
    values = values[steps <= until]
    return float(values.min()) if len(values) else None


def _below_zero_by(facts: RunFacts, until: int) -> int | None:
    """The step from which the loss stayed below zero, when it did by ``until`` (its last
    ``RECEDED_READINGS`` readings then all negative), in a run whose logits were read from no
    cross-entropy against class targets (those record softmax collapse, and are never negative:
    a negative total there is another term's, a learnt log-variance weighting tasks)."""
    loss = facts.series(LOSS.name)
    if loss is None or facts.series(SOFTMAX_COLLAPSE.name) is not None:
        return None
    steps, values = loss[0][loss[0] <= until], loss[1][loss[0] <= until]
    if len(values) < RECEDED_READINGS or not (values[-RECEDED_READINGS:] < 0).all():
        return None
    above = np.flatnonzero(~(values < 0))
    return int(steps[above[-1] + 1]) if len(above) else int(steps[0])


def _pushes(facts: RunFacts) -> tuple[np.ndarray, np.ndarray]:
    """The readings at which the loss's gradient in the output logits' common shift proved it
    pushes every logit up, as the output-logit detector judges it: at or below
    ``-SHIFT_REWARDED`` at two readings in a row (the second counts), or at or below
    ``-SHIFT_DOMINANT`` at one, the loss then large enough for the reading to be trusted."""
    series = facts.series(OUTPUT_SHIFT_GRADIENT.name)
    if series is None:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    steps, values = series
    pushed = values <= -SHIFT_REWARDED
    losses = facts.series(LOSS.name)
    if losses is not None and len(losses[0]):
        at = np.clip(np.searchsorted(losses[0], steps), 0, len(losses[0]) - 1)
        pushed &= ~(np.abs(losses[1][at]) < SHIFT_TRUSTED_LOSS)
    proven = pushed & (values <= -SHIFT_DOMINANT)
    proven[1:] |= pushed[1:] & pushed[:-1]
    return steps[proven], values[proven]


def _output_layer_ran_away(facts: RunFacts) -> tuple[str, int, float] | None:
    """(the output layer, the step its weights began to grow, how much) when the weights
    that ran away before the trouble (:func:`_runaway_weights`), or else those that grew far
    more than any other by then (:func:`_amplifier`: up to a burst of the learning rate that
    came first, whose steps throw every weight), are the output layer's, and it is not
    applied in a recurrence."""
    layer = facts.output_layer
    trouble = [s for s in (facts.climbing_from, facts.broke_at) if s is not None]
    if layer is None or not trouble:
        return None
    if layer in facts.recurrent_modules:
        return None  # applied step after step (an ODE's last layer): it explodes through time
    runaway = facts.runaway_weights
    if runaway is not None:
        name, began, factor, share = runaway
        return (layer, began, factor) if share <= 0.5 and _inside(name, layer) else None
    until = _before_explosion(facts, min(trouble))
    burst = _burst_before(facts, until)
    if burst is not None:
        until = min(until, burst[0] - 1)  # what the burst's steps threw is the burst's doing
    grown = _amplifier(_weight_growth(facts, until))
    if grown is None or not _inside(grown[0], layer):
        return None
    return layer, _doubled_at(facts, grown[0]), grown[1]


def _doubled_at(facts: RunFacts, parameter: str) -> int:
    """The first step at which a weight tensor's norm stood twice its lowest before."""
    steps, values = facts.series(f"{PARAM_NORM.name}/{parameter}")
    ok = np.isfinite(values)
    steps, values = steps[ok], values[ok]
    lowest = np.minimum.accumulate(values)
    doubled = np.flatnonzero(values >= 2.0 * lowest)
    return int(steps[doubled[0]] if len(doubled) else steps[-1])


def _amplifier(growth: list[tuple[float, str]]) -> tuple[str, float] | None:
    """Of (growth, parameter) pairs, the weight tensor that grew the most, if it grew
    ``AMPLIFIER_GROWTH`` times and ``AMPLIFIER_LEAD`` times more than any other."""
    if not growth:
        return None
    (top, name), *rest = sorted(growth, reverse=True)
    runner_up = rest[0][0] if rest else 1.0
    if top >= AMPLIFIER_GROWTH and top >= AMPLIFIER_LEAD * runner_up:
        return name, top
    return None


def _weight_growth(facts: RunFacts, until: int) -> list[tuple[float, str]]:
    """(growth, parameter) of each weight tensor: its norm's last finite value by ``until`` over
    its lowest in the first half of that span. Biases are left out, and so is any tensor that
    started near 0 (a hundredth of the median tensor's norm: a GIN's learnt epsilon) or at
    exactly 0 (a Fixup or zero-initialised head, its first update ratio infinite or 0/0):
    growth from nothing says nothing."""
    spans = []
    for name in facts.names:
        if "/" not in name or not PARAM_NORM.owns(name) or name.endswith("bias"):
            continue
        if _started_at_zero(facts, name.split("/", 1)[1]):
            continue
        steps, values = facts.series(name)
        values = values[np.isfinite(values) & (steps <= until)]
        if len(values) >= 10:
            spans.append((float(values[: len(values) // 2].min()), float(values[-1]), name))
    if not spans:
        return []
    floor = 0.01 * float(np.median([low for low, _, _ in spans]))
    return [(last / low, name.split("/", 1)[1]) for low, last, name in spans if low > floor]


# Of a weight tensor's growth (in log) over its span, the share the later half made, at least: a
# weight scaled by the same factor each step makes half; an adaptive optimizer's steps far too
# large for a small initialisation make most of it in the first steps, and slow as it grows.
COMPOUNDING = 0.3


def _later_share(facts: RunFacts, parameter: str, until: int) -> float | None:
    """The share of ``parameter``'s growth (its norm's, in log, from its lowest in the first
    half of its span to its last by ``until``, as :func:`_weight_growth` reads it) made after
    the middle of that span; None when it did not grow."""
    steps, values = facts.series(f"{PARAM_NORM.name}/{parameter}")
    values = values[np.isfinite(values) & (steps <= until)]
    if len(values) < 10:
        return None
    low = int(np.argmin(values[: len(values) // 2]))
    middle = float(values[(low + len(values) - 1) // 2])
    whole = math.log(float(values[-1]) / float(values[low]))
    if not whole > 0 or not middle > 0:
        return None
    return math.log(float(values[-1]) / middle) / whole


def _started_at_zero(facts: RunFacts, parameter: str) -> bool:
    """The tensor's first update ratio was infinite or 0/0: its weights were exactly zero before
    the first update (a zero-initialised head, Fixup's last layers), with finite weights."""
    ratios = facts.series(f"{UPDATE_RATIO.name}/{parameter}")
    if ratios is None or not len(ratios[1]):
        return False
    first = float(ratios[1][0])
    if first == math.inf:
        return True
    norms = facts.series(f"{PARAM_NORM.name}/{parameter}")
    return math.isnan(first) and norms is not None and bool(np.isfinite(norms[1][:1]).all())


def _nonfinite(facts: RunFacts) -> Found | None:
    found = facts.of(NONFINITE, NONFINITE_ORIGIN)
    if not found:
        return None
    first = found[0]
    ev = dict(first.evidence)
    with_forward = next((f for f in found if "forward_origin" in f.evidence), None)
    backward = first.evidence.get("backward_origin")
    where: list[str] = []
    summary = f"NaN/Inf from step {first.step}"
    origin = with_forward.evidence["forward_origin"] if with_forward is not None else {}
    if backward:  # the forward pass was finite: the backward pass made the first bad value
        if not origin.get("in_the_backward"):  # else the module that made it is named below
            where.append(backward["parameter"])
        loss = first.evidence.get("loss", math.nan)
        summary += (
            f": the gradient of {backward['parameter']} went non-finite first in the backward "
            f"pass (the loss was still finite, {loss:.4g})"
        )
    if with_forward is not None and origin.get("in_the_backward"):
        where.append(origin["module"])
        summary += (
            f"; replayed, the first non-finite gradient was made in {origin['module']}'s "
            f"backward: {origin['in_the_backward']}"
        )
    elif with_forward is not None and origin.get("module") is None:
        # the weights were already corrupted when the guard looked: no producer can be named
        summary += "; " + origin.get("note", "the first non-finite producer cannot be known")
    elif with_forward is not None and origin.get("taken_in_by"):
        # a NaN or Inf in the batch (or a value computed for it): placed where it came in
        where.append(origin["taken_in_by"])
        made = origin.get("note", "the model's input was non-finite")
        summary += f"; {made}, first taken in by {where[-1]}"
    elif with_forward is not None:
        module = origin["module"]
        where.append(module)
        if with_forward.step > first.step and first.evidence.get("nonfinite_params"):
            how = "a non-finite update reached" if backward else "non-finite values were in"
            summary += (
                f"; {how} the weights, and at step {with_forward.step} "
                f"the first non-finite forward output came from {module}"
            )
        elif origin.get("between"):
            operation = f" ({origin['operation']})" if origin.get("operation") else ""
            summary += (
                f"; the first non-finite value was made from {module}'s finite output by an "
                f"operation outside any module{operation}, before {origin['between']}"
            )
        elif origin.get("in_the_loss"):
            summary += (
                "; the forward pass was finite on a replay of the step: the loss made the NaN "
                f"from {module}'s output ({origin['in_the_loss']})"
            )
        else:
            summary += f"; first non-finite forward output produced by {module}"
    skipped = facts.series(OPTIMIZER_SKIPPED.name)
    if skipped is not None:
        ev["skipped_steps"] = int(np.nansum(skipped[1]))
    return Found(summary, first.step, where, ev)


def _forward_overflow(facts: RunFacts) -> Found | None:
    """A NaN that no scaler caught, whose first producer overflowed float16 (its output, from
    finite inputs, is finite computed again in float32): mixed precision broke the run."""
    for f in facts.of(NONFINITE, NONFINITE_ORIGIN):
        origin = f.evidence.get("forward_origin") or {}
        if origin.get(FLOAT16_OVERFLOW) and origin.get("module"):
            module = origin["module"]
            summary = (
                f"float16 overflow in the forward pass at step {f.step}: {module}'s output went "
                "non-finite from finite inputs, and is finite computed in float32 (activations "
                "beyond float16's 65504); loss scaling cannot help a forward overflow"
            )
            return Found(summary, f.step, [module], {"forward_origin": origin}, "critical")
    return None


def _producer(f: Finding) -> str | None:
    """The module whose forward output was the first non-finite value, if found (or, for a
    value the batch or the model's own forward brought in, the module that took it in)."""
    origin = f.evidence.get("forward_origin") or {}
    return origin.get("taken_in_by") or origin.get("module")


def _skipped_steps(facts: RunFacts) -> set[int]:
    """The steps the optimizer did not take (the series has an entry at those steps only)."""
    skipped = facts.series(OPTIMIZER_SKIPPED.name)
    return set() if skipped is None else set(skipped[0][skipped[1] > 0].tolist())


# A GradScaler starts at a scale set high on purpose (2**16) and halves it at each overflowing
# step until the gradients fit: skips from the start are that search, up to 16 of them (past
# that the scale is below 1: the gradients overflow float16 unscaled).
SCALE_SEARCH_STEPS = 16


def _scale_search(steps: np.ndarray, skipped: set[int]) -> int:
    """How many of the run's first recorded steps in a row the optimizer skipped, if no more
    than ``SCALE_SEARCH_STEPS`` (the scaler's start-up search for its scale); else 0."""
    count = 0
    for step in steps.tolist():
        if int(step) not in skipped:
            break
        count += 1
    return count if count <= SCALE_SEARCH_STEPS else 0


def _caught_by_scaler(facts: RunFacts) -> bool:
    """Every non-finite step (if any) was one the optimizer skipped, not by the autopilot, and
    left the weights finite: an fp16 overflow a GradScaler caught (a forward pass overflowing
    float16 makes the loss itself non-finite, step after step), not a NaN that reached the
    model."""
    nonfinite = facts.of(NONFINITE)
    if not nonfinite:
        return True
    if facts.series(AMP_SCALE.name) is None and any(
        f.evidence.get(NONFINITE_GRADS.name) == 0 for f in nonfinite
    ):
        # no GradScaler handed to the Monitor, and a step not taken whose gradients were all
        # finite: a scaler skips only the steps whose gradients it finds non-finite; this was
        # the loop stopping at its NaN before the backward pass
        return False
    by_optimizer = _skipped_steps(facts)
    by_autopilot = {a.step for a in _autopilot_actions(facts)}
    return all(
        f.evidence.get("nonfinite_params") == 0
        and f.step in by_optimizer
        and f.step not in by_autopilot
        for f in nonfinite
    )


def _overflowing_from_the_start(facts: RunFacts, step: int) -> int | None:
    """How many steps the optimizer skipped from the run's first record up to ``step``, when it
    skipped every one of them and they were more than ``SCALE_SEARCH_STEPS`` (a GradScaler's
    search for its scale ends by then: past it, the gradients overflow float16 unscaled); None
    otherwise."""
    loss = facts.series(LOSS.name)
    if loss is None:
        return None
    before = loss[0][loss[0] < step]
    skipped = _skipped_steps(facts)
    if len(before) <= SCALE_SEARCH_STEPS or any(int(s) not in skipped for s in before):
        return None
    return len(before)


AMP_STALL_SHARE = 0.5  # skipping at least this share of steps is not benign
AMP_STALL_STEPS = 20  # nor skipping every one of the last this many steps


def _nonfinite_gradients_only_in(facts: RunFacts, step: int) -> list[str]:
    """The modules whose tensors' gradient norms at ``step`` were not finite, when some others'
    were: the overflow sat in their own computation, not upstream of every layer (an overflow
    in the loss or the head makes every gradient non-finite). Empty otherwise."""
    norms = _family_at(facts, GRAD_NORM, step, finite_only=False)
    bad = _modules_of([t for t, norm in norms.items() if not math.isfinite(norm)])
    good = any(math.isfinite(norm) for norm in norms.values())
    return sorted(bad, key=_natural) if bad and good else []


def _amp_overflow(facts: RunFacts) -> Found | None:
    # one finding per episode of skipped steps with a finite loss; a loss overflowing too is
    # a non-finite episode the scaler caught
    overflow = facts.of(AMP_OVERFLOW) or facts.of(NONFINITE)
    if not overflow or not _caught_by_scaler(facts):
        return _forward_overflow(facts)
    steps = facts.series(LOSS.name)
    total = len(steps[0]) if steps else 0
    skipped = facts.series(OPTIMIZER_SKIPPED.name)
    count = int(np.nansum(skipped[1])) if skipped is not None else len(overflow)
    share = count / total if total else 0.0
    # each of the run's last steps skipped (not the last entries of the skipped series)
    last = steps[0][-AMP_STALL_STEPS:] if steps else np.zeros(0)
    by_scaler = _skipped_steps(facts)
    stalled = len(last) == AMP_STALL_STEPS and all(int(t) in by_scaler for t in last)
    evidence = {"skipped_steps": count, "episodes": len(overflow), "share": share}
    forward = bool(facts.of(NONFINITE))  # the forward pass itself overflowed float16
    search = _scale_search(steps[0] if steps else np.zeros(0), by_scaler)
    if search and not forward:
        # the scaler's start-up search for its scale is no overflow of the run's own
        share = (count - search) / total if total else 0.0
        evidence.update(scale_search_steps=search, share=share)
    where = sorted({m for f in facts.of(NONFINITE, NONFINITE_ORIGIN) if (m := _producer(f))})
    first = _first(facts.of(NONFINITE) if forward else overflow)
    if not where:
        # every output finite (an overflowed intermediate a clamp or an exp(-inf) hid): the
        # backward pass names it, through the only tensors whose gradients went non-finite
        where = _nonfinite_gradients_only_in(facts, first)
    if stalled or share >= AMP_STALL_SHARE:
        # the stall began at its first skipped step past the scaler's start-up search, which
        # may come well before the first forward pass that overflowed
        first = min([first, *(f.step for f in overflow if f.step >= search)])
        summary = (
            f"mixed-precision overflow is stalling training: the GradScaler skipped {count} of "
            f"{total} steps ({share:.0%})"
            + (f", including the last {AMP_STALL_STEPS}" if stalled else "")
            + f"; the {'loss overflows' if forward else 'gradients overflow'} even at a lowered "
            "scale, so the weights barely move. This is not benign"
            + (f" (first non-finite output: {', '.join(where)})" if where else "")
        )
        return Found(summary, first, where, evidence, "critical")
    if forward:  # activations beyond float16's range: not benign
        summary = (
            f"mixed-precision overflow in the forward pass: the loss went non-finite and the "
            f"GradScaler skipped {count} step(s) ({share:.1%} of steps); the weights stayed "
            "finite, but activations exceed float16's range"
            + (f", first in {', '.join(where)}" if where else "")
        )
        return Found(summary, first, where, evidence, "warning")
    skipped = (
        f"the GradScaler skipped {count} step(s) in {len(overflow)} episode(s) ({share:.1%} of "
        "steps) and lowered its scale"
    )
    search_said = f" ({search} of them its start-up search for a scale)" if search else ""
    broke = facts.broke_at
    if broke is not None and broke >= _first(overflow):
        # finite through the episode, but the run broke after it: not benign; what broke it
        # is named by its own rule
        summary = (
            f"mixed-precision overflow before the run broke at step {broke}: {skipped}; the "
            "loss and weights stayed finite through it" + search_said
        )
    else:
        summary = (
            f"benign mixed-precision overflow: {skipped}; the loss and weights stayed finite, so "
            "this is not a divergence" + search_said
        )
    severity = "warning" if share > 0.05 else "info"
    where = _overflowed_first(overflow)
    if where:
        summary += f"; the gradient that overflowed first: {', '.join(where)}"
    unscaled = _unscaled_inputs(facts)
    if unscaled is not None:
        layer, rms = unscaled
        where = [layer] + [w for w in where if not _inside(w, layer)]
        evidence["input_rms"] = rms
        summary += (
            f"; the model's inputs have RMS {rms:.3g} (standardised features have about 1), "
            f"read by {layer}: unscaled inputs multiply every gradient after them, and the "
            "scaled ones reach float16's limit"
        )
    return Found(summary, _first(overflow), where, evidence, severity)


# The median RMS of the model's floating-point inputs at or above which they were not scaled:
# standardised features and images in [0, 1] have an RMS near 1; raw readings (pressures in
# kPa, pixel values to 255, volts) stand tens to thousands of times higher.
UNSCALED_INPUTS = 10.0


def _unscaled_inputs(facts: RunFacts) -> tuple[str, float] | None:
    """The layer that read the model's input batch and the inputs' median RMS, when that is
    ``UNSCALED_INPUTS`` or more: inputs fed raw, whose scale every gradient after them carries."""
    layer, inputs = facts.input_layer, facts.series(INPUT_RMS.name)
    if layer is None or inputs is None:
        return None
    rms = inputs[1][np.isfinite(inputs[1])]
    if not len(rms) or not float(np.median(rms)) >= UNSCALED_INPUTS:
        return None
    return layer, float(np.median(rms))


def _overflowed_first(overflow: list[Finding]) -> list[str]:
    """The tensors whose float16 gradient overflowed first in the backward pass in the most
    episodes (and those that did in at least half as many): where the scaled gradient meets
    float16's limit."""
    counts = Counter(f.where for f in overflow if f.where)
    if not counts:
        return []
    most = max(counts.values())
    return sorted((w for w, n in counts.items() if 2 * n >= most), key=_natural)


# Steps after a spike during which its first moment still drives large updates (beta1 = 0.9
# keeps 0.9**20 = 12% of it); the second moment's damping is judged after them.
MOMENTUM_MEMORY = 20
POISON_BEYOND_CONTROL = 0.5  # a per-tensor spike's tensors slowed twice as much as the rest
# Optimizers that clip a spike before it reaches their moments (SPAM: entries above
# theta * v become sqrt(theta * v); Stable-SPAM clips and renormalises too). One spike can then
# raise v at most 1 + theta * (1 - beta2) times: 6x at SPAM's defaults (theta 5000, beta2
# 0.999), updates shrinking to 1/sqrt(6) = 0.41 and back as v decays. A shrink that stays
# within three quarters of that is the clipping working as designed, not a poisoned moment.
SPIKE_CLIPPING = {"SPAM": 0.3, "StableSPAM": 0.3}
# Steps after a spike at which updates still damped say its harm outlived it: the batch that
# made the spike is long gone, the second moment it inflated still holds the run back (Adam's
# beta2 = 0.999 remembers ~1000 steps; a beta2 of 0.95 or RMSprop's 0.99 has forgotten by then
# all but a gradient thousands of times the usual).
OUTLIVED_AFTER = 100


def _update_drop(facts: RunFacts, names: list[str], step: int, lag: int = 0) -> float:
    """Median over ``names`` of each tensor's update ratio over the 50 steps after a spike's
    momentum has passed (and ``lag`` more), against the 50 steps before it (NaN when none has
    both), over the learning rate's own change between those spans (a schedule decaying it
    shrinks every update alike). Steps the optimizer skipped (a GradScaler's overflow) are left
    out: they moved nothing, whatever the second moment held. A spike within the optimizer's
    first MOMENTUM_MEMORY steps is compared with those steps, its drop read ``EARLY_SHRINK``
    times milder: as much as they shrink on their own."""
    skipped = np.asarray(sorted(_skipped_steps(facts)), dtype=float)
    drops = [_after_over_before(*_taken(facts.series(name), skipped), step, lag) for name in names]
    drops = [d for d in drops if math.isfinite(d)]
    if not drops:
        return math.nan
    rates = [_after_over_before(steps, values, step, lag) for steps, values in facts.learning_rates]
    rates = [r for r in rates if math.isfinite(r) and r > 0]
    # against the optimizer's first steps, read as much milder as they shrink on their own
    early = EARLY_SHRINK if step <= MOMENTUM_MEMORY else 1.0
    return float(early * np.median(drops) / (np.median(rates) if rates else 1.0))


def _taken(
    series: tuple[np.ndarray, np.ndarray], skipped: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A series without its readings at the ``skipped`` steps."""
    steps, values = series
    keep = ~np.isin(steps, skipped)
    return steps[keep], values[keep]


def _after_over_before(steps: np.ndarray, values: np.ndarray, step: int, lag: int = 0) -> float:
    """A series' median over the 50 steps after ``step + MOMENTUM_MEMORY + lag`` over its
    median in the 50 steps before ``step`` (NaN when either span is empty or the one before is
    not positive). The span before leaves out the optimizer's first MOMENTUM_MEMORY steps:
    while its first moment has not yet averaged out the gradient's noise, Adam's steps are
    larger (its first is the gradient's sign) and shrink on their own, spike or none. For a
    spike within those steps, the span before is theirs, but for the first step."""
    start = step + MOMENTUM_MEMORY + lag
    since = max(step - 50, MOMENTUM_MEMORY)
    early = since >= step
    if early:
        since = 1
    before = values[(steps < step) & (steps >= since) & np.isfinite(values)]
    after = values[(steps > start) & (steps <= start + 50) & np.isfinite(values)]
    if not len(before) or not len(after) or not np.median(before) > 0:
        return math.nan
    return float(np.median(after) / np.median(before))


# How many times an adaptive optimizer's updates shrink on their own over its first
# MOMENTUM_MEMORY steps, as its moments average out the gradient's noise (2-3x on the bench's
# healthy Adam runs).
EARLY_SHRINK = 3.0


def _strongest_damping(facts: RunFacts, spike: Finding, lag: int = 0, grown: float = 1.0) -> float:
    """The smallest share of their size that updates can keep, in the middle of the span
    :func:`_update_drop` reads, when a spike ``ratio`` times the usual gradient entered the
    optimizer's running square at step ``t``: the square's weight ``w`` then holds
    ``1 + w (ratio**2 - 1)`` times its usual value (``w = (1 - d) d**k / (1 - d**(t + k))``
    for an average that keeps ``d`` per step, with or without Adam's bias correction, which
    cancels; ``1 / (t + k)`` for Adagrad's sum), and steps shrink by its square root. Spread
    evenly over the coordinates the spike damps most (the update's norm is convex in each
    coordinate's inflation), so no spike of that size can damp more. The spike is measured
    against the gradients of that span: where they stood ``grown`` times their usual size (an
    explosion's, which kept coming), it stands that much less above them, and the running
    square holds them too. 0 when not known."""
    decay = facts.second_moment_decay
    ev = spike.evidence
    ratio = ev.get("ratio", ev.get("spike_factor"))
    if decay is None or not isinstance(ratio, (int, float)) or not math.isfinite(ratio):
        return 0.0
    ratio /= grown
    t, k = spike.step + 1, MOMENTUM_MEMORY + 25 + lag  # t: as if the optimizer began with the run
    if decay == 1.0:
        weight = 1.0 / (t + k)
    else:
        weight = (1 - decay) * decay**k / (1 - decay ** (t + k))
    return 1.0 / math.sqrt(1.0 + weight * max(ratio * ratio - 1.0, 0.0))


# A spike whose square holds this many times the usual second moment dominates it: the
# coordinates it hit then step by about (1 - beta1) / sqrt(1 - beta2) times the rate, whatever
# the gradient says, until the first moment forgets it.
DOMINATES_THE_MOMENT = 100.0


def _thrown_by_the_moments(facts: RunFacts, spike: Finding) -> Found | None:
    """A whole-gradient spike so large that its square dominated the optimizer's second moment,
    on a batch whose loss was ordinary (no loss spike at its step: a loss scaled once, not bad
    data), after which the loss climbed away within ``MOMENTUM_MEMORY`` steps, before any
    damping could be read: the spike's moments stepped every coordinate it touched by about
    ``(1 - beta1) / sqrt(1 - beta2)`` times the rate, in its direction, for the ~1/(1 - beta1)
    steps the first moment takes to forget it (Adam's defaults: 3x the rate, 30x summed)."""
    decay, ratio = facts.second_moment_decay, spike.evidence.get("ratio")
    if spike.kind != GRAD_NORM_SPIKE or decay is None or decay >= 1.0:
        return None  # a running sum (Adagrad) keeps a spike without stepping by it
    if facts.optimizer in SPIKE_CLIPPING or not isinstance(ratio, (int, float)):
        return None  # the optimizer clips a spike before its moments take it
    if not (1.0 - decay) * ratio * ratio >= DOMINATES_THE_MOMENT:
        return None
    if any(spike.step - 1 <= f.step <= spike.step for f in facts.of(LOSS_SPIKE)):
        return None  # the batch's own loss was out of line: bad data, judged elsewhere
    climbed = _climb_after(facts, spike.step)
    if climbed is None:
        return None
    hit = sorted({f.where for f in facts.of(GRADIENT_SPIKE) if f.step == spike.step and f.where})
    return Found(
        f"a gradient {ratio:.3g}x its usual size at step {spike.step}, on a batch whose loss was "
        f"ordinary (a loss scaled once, not bad data), dominated {facts.optimizer}'s moments: "
        f"for the steps after it, its first moment stepped every weight it touched by about "
        f"{(1 - 0.9) / math.sqrt(1.0 - decay):.2g}x the learning rate (at beta1 0.9) in one direction, and "
        f"the loss climbed away from step {climbed}",
        spike.step,
        [spike.where] if spike.where else hit,
        {"spike": spike.evidence, "climbed_at": climbed, "thrown_by_the_moments": True},
    )


def _adam_poisoned(facts: RunFacts) -> Found | None:
    """A gradient spike under an optimizer that divides by a running square of the gradient,
    after which the updates shrank: the spike's square inflated the second moment, which then
    damps updates for ~1/(1-beta2) steps. Each tensor's median update ratio over the 50 steps
    before the spike is compared with the 50 after its momentum has passed (the median of the
    drops of the tensors found spiking at that step, else of every tensor). When a spike hit
    some tensors only, they must have slowed beyond the tensors it missed. A spike that came
    once the loss was already climbing is part of that divergence, not what set it off."""
    # a spike on a tensor that carries a small share of the gradient (info) poisons nothing;
    # a global spike the loss did not feel (info) still can, when its damping lasted
    spikes = [
        f
        for f in facts.of(GRAD_NORM_SPIKE, GRADIENT_SPIKE)
        if f.kind == GRAD_NORM_SPIKE or f.severity != "info"
    ]
    if not spikes or not facts.adaptive:
        return None
    ratios = [n for n in facts.names if UPDATE_RATIO.owns(n)]
    for spike in spikes:
        if _in_a_climb(facts, spike.step):
            continue  # the loss was already climbing: a spike of the divergence, not its cause
        thrown = _thrown_by_the_moments(facts, spike)
        if thrown is not None:
            return thrown
        if facts.averages_iterates:
            # the weights are an average of the iterates (schedule-free): their steps shrink
            # as the average grows, a drop no spike needs to have made
            continue
        # a spike poisons the moments of the tensors it hit: those found spiking at its step
        # (a global spike, or one whose tensors have no updates recorded: every tensor)
        at_step = [f for f in spikes if f.step == spike.step]
        hit = {f.where for f in at_step if f.kind == GRADIENT_SPIKE}
        mine = [n for n in ratios if n.split("/", 1)[1] in hit]
        limit = SPIKE_CLIPPING.get(facts.optimizer, 0.5)
        # Read once the spike's momentum has passed; where the loss climbed meanwhile, its
        # grown gradients hide the damping until the loss is back down: read again
        # OUTLIVED_AFTER steps on (what a spike that size can still damp there, and no more)
        drop = _damping(facts, mine, ratios, spike, limit, at_step, 0)
        when = "after it"
        if not drop < limit and _climb_after(facts, spike.step) is not None:
            drop = _damping(facts, mine, ratios, spike, limit, at_step, OUTLIVED_AFTER)
            when = f"once the loss it threw up had come down ({OUTLIVED_AFTER} steps on)"
        where = [spike.where] if spike.where else sorted(hit)  # the tensors it hit
        if not drop < limit:
            # most tensors it hit kept their pace; a few may still have been all but stopped
            deep = _deeply_damped(facts, mine, ratios, spike.step, at_step)
            if not deep:
                continue
            drop, where = min(deep.values()), sorted(deep)
            mine = [f"{UPDATE_RATIO.name}/{name}" for name in where]
            when = f"after it in {layer_span(where)} (the others it hit kept their pace)"
        found = Found(
            f"a gradient spike at step {spike.step} poisoned {facts.optimizer}'s second "
            f"moment: the updates {when} shrank to {_share(drop)} of their size before",
            spike.step,
            where,
            {"spike": spike.evidence, "update_ratio_after_over_before": drop},
        )
        lasting = _update_drop(facts, mine or ratios, spike.step, OUTLIVED_AFTER)
        if spike.severity == "info" and not lasting < 0.5:
            # a spike the loss did not feel, whose damping had passed within OUTLIVED_AFTER
            # steps: early in training Adam's steps shrink as much on their own
            continue
        if lasting < 0.5:
            found.evidence["update_ratio_later_over_before"] = lasting
            found.outlived = (
                f"{OUTLIVED_AFTER} steps on they were still at {_share(lasting)}: the spike's "
                "harm outlived it"
            )
            found.set_off_by = ("data_outlier",)  # the batch behind the spike, when there was one
            if lasting != drop:  # not already read that late
                found.summary += f"; {found.outlived}"
        restarted = _jolted_by_a_restart(facts, spike.step)
        if restarted is not None and spike.step - restarted <= RESTART_WITHIN:
            found.consequence_of = (
                f"the optimizer's state started again from nothing at step {restarted}: its "
                "moments began again from the gradients of the jolt that restart made"
            )
        return found
    return None


def _share(x: float) -> str:
    """A share as a percentage, two significant figures below 1% (0.01%, not 0%)."""
    return f"{x:.0%}" if x >= 0.01 else f"{100 * x:.2g}%"


def _damping(
    facts: RunFacts,
    mine: list[str],
    ratios: list[str],
    spike: Finding,
    limit: float,
    at_step: list[Finding],
    lag: int,
) -> float:
    """How far the updates shrank after ``spike`` (``lag`` steps past its momentum), or NaN
    where no shrink the spike could have made is seen: none, one beyond what a spike of its
    size can damp, or (a spike on some tensors only) one no larger than those it missed show.
    Adam's steps also shrink on their own early in training (the gradient's noise grows
    against its mean); the spike's poisoning is the part beyond what the others show."""
    drop = _update_drop(facts, mine or ratios, spike.step, lag)
    grown = _grown_since(facts, spike.step, lag)
    if not drop < limit or _strongest_damping(facts, spike, lag, grown) >= limit:
        return math.nan
    if mine and not any(f.kind == GRAD_NORM_SPIKE for f in at_step):
        missed = _update_drop(facts, [n for n in ratios if n not in mine], spike.step, lag)
        if drop >= POISON_BEYOND_CONTROL * missed:  # NaN: no control to compare with
            return math.nan
    return drop


# A tensor whose updates fell to this share of their size after a spike hit it, and to
# POISON_BEYOND_CONTROL of what the tensors it missed kept, was all but stopped by it: its
# running square took the spike's square, whatever the other tensors it hit did (one whose own
# gradient is tiny next to the spike's share of it: an embedding of a scalar input).
DEEP_DAMPING = 0.1


def _deeply_damped(
    facts: RunFacts, mine: list[str], ratios: list[str], spike: int, at_step: list[Finding]
) -> dict[str, float]:
    """The tensors the spike at step ``spike`` hit (``mine``, their update-ratio series) whose
    updates it all but stopped: ``DEEP_DAMPING`` of their size before or less, and
    ``POISON_BEYOND_CONTROL`` of the drop of the tensors it missed (when it hit every tensor,
    of the others it hit: a spike fills the running square of the tensors whose own gradient
    it dwarfs, and leaves the rest at their pace), and within what a spike of their own size
    can damp; by tensor name. Empty when no tensor was."""
    missed = [n for n in ratios if n not in mine]
    own = {f.where: f for f in at_step if f.kind == GRADIENT_SPIKE}
    drops = {name: _update_drop(facts, [name], spike) for name in mine}
    kept = _update_drop(facts, missed, spike) if missed else math.nan
    grown = _grown_since(facts, spike, 0)
    deep = {}
    for name, drop in drops.items():
        tensor = name.split("/", 1)[1]
        hit = own.get(tensor)
        if hit is None or not drop < DEEP_DAMPING:
            continue
        control = kept
        if not missed:  # the median of the others it hit (each drop over the same rate change)
            others = [d for n, d in drops.items() if n != name and math.isfinite(d)]
            control = float(np.median(others)) if others else math.nan
        if not drop < POISON_BEYOND_CONTROL * control:
            continue
        if _strongest_damping(facts, hit, 0, grown) < DEEP_DAMPING:
            deep[tensor] = drop
    return deep


def _grown_since(facts: RunFacts, step: int, lag: int) -> float:
    """How many times the usual norm (the median of the 50 steps before ``step``) the whole
    gradient's median stood over the span :func:`_update_drop` reads (``lag`` steps past the
    spike's momentum); 1 where it did not stand above it or is not known."""
    series = facts.series(GRAD_NORM.name)
    if series is None:
        return 1.0
    steps, norms = series
    usual = norms[(steps < step) & (steps >= step - 50) & np.isfinite(norms)]
    start = step + MOMENTUM_MEMORY + lag
    after = norms[(steps > start) & (steps <= start + 50) & np.isfinite(norms)]
    if not len(usual) or not len(after) or not np.median(usual) > 0:
        return 1.0
    return max(1.0, float(np.median(after) / np.median(usual)))


def _climb_after(facts: RunFacts, step: int) -> int | None:
    """The first step within MOMENTUM_MEMORY steps after ``step`` at which the loss climbed
    away (a loss divergence, not info), or None."""
    climbs = [
        f.step
        for f in facts.of(LOSS_DIVERGENCE)
        if f.severity != "info" and step < f.step <= step + MOMENTUM_MEMORY
    ]
    return min(climbs, default=None)


def _batches_behind(spikes: list[Finding], evidence: dict[str, Any]) -> str:
    """Name the batch behind the first spike that has ids (adds them to ``evidence``)."""
    ids = next((f.batch_ids for f in spikes if f.batch_ids), None)
    if not ids:
        return ""
    evidence["batch_ids"] = ids[:32]
    return f"; batch ids {ids[:8]}"


def _gradient_spike(facts: RunFacts) -> Found | None:
    spikes = facts.of(GRAD_NORM_SPIKE, GRADIENT_SPIKE)
    if not spikes:
        return None
    minor = all(f.severity == Severity.INFO for f in spikes)  # each a small share of its step
    # the global norm's spikes say whether clipping hid them, whatever the tensors' severity
    hidden = [f for f in spikes if f.evidence.get("hidden_by_clipping")]
    spikes = _serious(spikes)
    first = spikes[0]
    ev: dict[str, Any] = {"spikes": len(spikes), "first": first.evidence}
    summary = f"{len(spikes)} gradient spike(s), the first at step {first.step}"
    if first.where:
        summary += f" in {first.where}"
    if hidden:
        ev["hidden_by_clipping"] = len(hidden)
        h = hidden[0].evidence
        summary += (
            f" (hidden by clipping: {len(hidden)} spike(s) reached "
            f"{h.get('grad_norm_preclip', math.nan):.3g} before clipping, "
            f"{h.get('clipped_to', math.nan):.3g} after; the logged grad norm looked normal)"
        )
    summary += _batches_behind(spikes, ev)
    # the spike's update goes on for as long as the optimizer's momentum carries it, and what
    # it did is confirmed up to CONFIRMED_SOON steps after that
    reach = first.step + facts.spike_carried + CONFIRMED_SOON
    felt = [
        f.step
        for f in facts.of(LOSS_SPIKE)
        if f.severity != "info" and first.step < f.step <= reach
    ]
    climbed = [
        f.step
        for f in facts.of(LOSS_DIVERGENCE)
        if f.severity != "info" and first.step < f.step <= reach
    ]
    # a loss that jumped at the spike's own step made it (a batch, weights replaced): the
    # climb after is the jump's, not the spike's update's
    jumped = any(f.step == first.step and f.severity != "info" for f in facts.of(LOSS_SPIKE))
    if minor and felt:
        # the loss did not feel it at once, but spiked within a few steps of its update, with
        # nothing between (an adaptive or momentum step carries a kick over several steps)
        minor = False
        ev["loss_spike_at"] = felt[0]
        summary += f"; the loss spiked {felt[0] - first.step} step(s) after it"
    elif minor and climbed and not jumped:
        # or left its level for good within a few steps: the spike's update threw the weights
        minor = False
        ev["loss_climbed_at"] = climbed[0]
        summary += (
            f"; the loss climbed away from its level {climbed[0] - first.step} step(s) after it"
        )
    where = _most_spiked(spikes)
    if not where and (where := _spiked_tensors(facts, first.step)):
        summary += f" (furthest above its usual level: {layer_span(where)})"
    found = Found(summary, first.step, where, ev, "info" if minor else None)
    found.consequence_of = _spike_made_by(facts, first.step)
    return found


# Readings before a spike that give a tensor's usual gradient norm.
USUAL_OVER = 20


def _spiked_tensors(facts: RunFacts, step: int) -> list[str]:
    """Where a spike of the whole gradient at ``step`` was, when no tensor's own spike was
    found: the tensors whose gradient stood furthest above its usual level (the median of its
    ``USUAL_OVER`` readings before), half the furthest or more, most first; a tensor whose
    gradient there was a thousandth of the step's largest or less (rounding) left out."""
    rises: dict[str, tuple[float, float]] = {}
    for name in facts.names:
        if not (GRAD_NORM.owns(name) and "/" in name):
            continue
        steps, values = facts.series(name)
        at, before = values[steps == step], values[(steps < step) & (steps >= step - USUAL_OVER)]
        before = before[np.isfinite(before)]
        if len(at) and np.isfinite(at[0]) and len(before) and np.median(before) > 0:
            rises[name.split("/", 1)[1]] = (float(at[0] / np.median(before)), float(at[0]))
    if not rises:
        return []
    largest = max(norm for _, norm in rises.values())
    rises = {k: r for k, (r, norm) in rises.items() if norm > 1e-3 * largest}
    top = max(rises.values(), default=0.0)
    return sorted((k for k, r in rises.items() if r >= top / 2), key=lambda k: -rises[k])


def _most_spiked(spikes: list[Finding]) -> list[str]:
    """The tensors of ``spikes``, step by step, each step's the most above its own running
    level first (a block whose gradient was scaled up leads the layers it flowed back
    through); a tensor whose gradient there was a thousandth of the step's largest or less
    (a bias before a norm, whose gradient is rounding) last."""
    largest: dict[int, float] = {}
    for f in spikes:
        largest[f.step] = max(largest.get(f.step, 0.0), f.evidence.get("grad_norm", 0.0))

    def order(f: Finding) -> tuple:
        material = f.evidence.get("grad_norm", 0.0) > 1e-3 * largest[f.step]
        # the name last: tensors spiked alike (an RNN's two biases) in one order every time
        return (f.step, not material, -f.evidence.get("spike_factor", 0.0), f.where or "")

    return list(dict.fromkeys(f.where for f in sorted(spikes, key=order) if f.where))


def _edge_reached_after(facts: RunFacts, step: int) -> tuple[int, str] | None:
    """(the step, the module) of a NaN the loss made after ``step`` from a module's output that
    held values at an edge (exact zeros, or negatives among positives: see
    :meth:`ActivationSignal._in_the_loss`): within ``CONFIRMED_SOON`` steps, when the loss at
    ``step`` did not spike (the gradient leapt as that output neared the edge); or within
    ``NEARING_EDGE`` steps, when the gradient spiked in that very module: a log or a root near
    its edge makes the loss and its gradient leap together, on the module that feeds it."""
    spiked = {f.where for f in facts.of(GRADIENT_SPIKE) if f.step == step and f.where}
    jumped = any(f.step == step and f.severity != "info" for f in facts.of(LOSS_SPIKE))
    for f in facts.of(NONFINITE, NONFINITE_ORIGIN):
        origin = f.evidence.get("forward_origin") or {}
        edge = str(origin.get("in_the_loss", "")).startswith("its output held")
        module = origin.get("module")
        if not edge or not module or f.step <= step:
            continue
        if not jumped and f.step <= step + CONFIRMED_SOON:
            return f.step, module
        if f.step <= step + NEARING_EDGE and any(_inside(t, module) for t in spiked):
            return f.step, module
    return None


# Steps before a NaN made at an edge within which a gradient spike in the module whose output
# crossed it was that output nearing the edge.
NEARING_EDGE = 2 * CONFIRMED_SOON


def _spike_made_by(facts: RunFacts, step: int) -> str:
    """What made a gradient spike at ``step``, when something else did ('' when nothing):
    a climb already under way, a runaway it began, weights thrown by the step before or by an
    optimizer started again, an explosion it rode on, a non-finite loss it came with."""
    loss = facts.series(LOSS.name)
    at = loss[1][loss[0] == step] if loss is not None else []
    if len(at) and not np.isfinite(at[0]):
        return (
            f"the loss of step {step} itself was not finite: the gradient came back through "
            "the values that made it (a log or a root is steep where its input crosses zero), "
            "part of that non-finite value, not a cause before it"
        )
    edge = _edge_reached_after(facts, step)
    if edge is not None:
        broke, module = edge
        return (
            f"the loss made a NaN from {module}'s output {broke - step} step(s) later, where "
            "that output crossed the edge its log or root takes (zero): such a function is "
            "steep near its edge, and a gradient that leaps there is the NaN's approach, not a "
            "cause before it"
        )
    if _in_a_climb(facts, step):
        return (
            f"the loss was already climbing from step {facts.climbing_from}: the spikes came "
            "with the divergence, not before it"
        )
    fell = _fell_without_bound(facts)
    if fell is not None and fell.first_step is not None and fell.first_step < step:
        return (
            f"the loss was already falling below zero without bound from step "
            f"{fell.first_step}: the spikes came with the outputs it drove, not before them"
        )
    if _never_came_back(facts, step):
        return (
            f"the gradient norm never came back after step {step}: it rose on with the loss, "
            "the first step of a runaway, not a spike"
        )
    if (jump := _shifted_with_the_loss(facts, step)) is not None:
        return (
            f"the loss had already jumped {jump:.3g}x at step {step}, before that step's "
            "update, and neither it nor the gradient norm came back: what the model is asked "
            "to fit changed there (the gradient follows the loss), the first step of a "
            "runaway, not a spike"
        )
    if (moved := _overstepped_before(facts, step)) is not None:
        return (
            f"the update before step {step} moved the weights {moved:.3g}x their usual step on "
            "an ordinary gradient: the gradient is that of where they landed"
        )
    if any(f.step == step for f in facts.of(LOSS_SPIKE)) and _replaced_at(facts, step, {step}):
        return (
            f"the weights were replaced between steps at step {step}, further than this "
            "optimizer's step moves them (a checkpoint reloaded, a layer initialised again), "
            "and the loss jumped with them before any update: the gradient is that of the "
            "weights put in their place"
        )
    if (restarted := _restarted_before(facts, step)) is not None:
        return (
            f"the optimizer's state started again from nothing at step {restarted}: the "
            "gradient is that of where its first steps threw the weights"
        )
    if (raised := _raised_before(facts, step)) is not None:
        return (
            f"the learning rate was raised 4x or more at a stroke at step {raised}: the "
            "gradient is that of where the raised steps threw the weights"
        )
    bursts = _bursts_through_time(facts)
    if bursts is not None and step >= bursts.first_step:
        return (
            f"the gradients of the recurrent {bursts.where[0]} burst from step "
            f"{bursts.first_step} until one burst overflowed at step "
            f"{bursts.evidence['nonfinite_step']}: an explosion through time, in bursts"
        )
    if (skipped := _overflowing_around(facts, step)) is not None:
        return (
            f"the GradScaler skipped step {skipped} for a float16 overflow: the gradients "
            "around it were at float16's edge, this one just under it"
        )
    if (grown := _riding_a_growth(facts, step)) is not None:
        return (
            f"the gradient norm had already grown {grown[1]:.3g}x since step {grown[0]} and "
            "went on growing until the run broke: a burst of that explosion, not a spike of "
            "its own"
        )
    return ""


# Steps either side of a gradient spike within which a step the optimizer skipped (a GradScaler's
# overflow) makes the spike a reading of that overflow.
OVERFLOW_AROUND = 5


def _overflowing_around(facts: RunFacts, step: int) -> int | None:
    """The nearest step, ``OVERFLOW_AROUND`` or fewer either side of ``step``, that the
    optimizer skipped with a finite loss (not the autopilot: a GradScaler's overflow), if any."""
    by_autopilot = {a.step for a in _autopilot_actions(facts)}
    loss = facts.series(LOSS.name)
    finite = set() if loss is None else set(loss[0][np.isfinite(loss[1])].tolist())
    near = [
        s
        for s in _skipped_steps(facts)
        if abs(s - step) <= OVERFLOW_AROUND and s not in by_autopilot and s in finite
    ]
    return min(near, key=lambda s: abs(s - step)) if near else None


# A gradient norm this many times the best level of a growth that broke the run, just before a
# spike, had already grown: the spike rode on the explosion.
RODE_ON = 10.0


def _riding_a_growth(facts: RunFacts, step: int, before: int = 5) -> tuple[int, float] | None:
    """Where a gradient growth that broke the run began, and how many times its best level the
    gradient norm stood (the median of the ``before`` readings) just before ``step``, when that
    growth began before ``step`` and the norm was ``RODE_ON`` times that level or more."""
    growths = [f for f in facts.of(GRADIENT_GROWTH) if f.severity == "critical"]
    grad = _finite_until(facts, GRAD_NORM.name, step - 1)
    if not growths or facts.broke_at is None or grad is None or len(grad[1]) < before:
        return None  # no growth that broke the run
    level = float(np.median(grad[1][-before:]))
    for f in growths:
        began, best = f.evidence.get(GROWTH_BEGAN), f.evidence.get("best_level")
        if not isinstance(began, (int, float)) or began >= step:
            continue
        if isinstance(best, (int, float)) and best > 0 and level >= RODE_ON * best:
            return int(began), level / best
    return None


def _never_came_back(facts: RunFacts, step: int, readings: int = 3) -> bool:
    """Whether the gradient norm at ``step`` was the first of a runaway: at each of the next
    ``readings`` records (or up to the first non-finite one, when it comes sooner, at least one
    before it) the gradient norm stood above it and the loss at or above its own. A spike is a
    step the norm comes back from."""
    grads, loss = facts.series(GRAD_NORM.name), facts.series(LOSS.name)
    if grads is None or loss is None:
        return False
    steps, norms = grads
    at = np.flatnonzero(steps == step)
    l_at = np.flatnonzero(loss[0] == step)
    if not len(at) or not len(l_at):
        return False
    after = norms[at[0] + 1 : at[0] + 1 + readings]
    later_loss = loss[1][l_at[0] + 1 : l_at[0] + 1 + readings]
    finite = np.isfinite(after) & np.isfinite(later_loss[: len(after)])
    cut = int(np.argmin(finite)) if not finite.all() else len(after)
    after, later_loss = after[:cut], later_loss[:cut]
    if not len(after) or (cut == len(finite) and len(after) < readings):
        return False  # the run ended first: nothing to tell
    return bool((after > norms[at[0]]).all() and (later_loss >= loss[1][l_at[0]]).all())


# A loss this many times its recent median, at the very step of a gradient spike, jumped before
# the spike's update could move anything.
JUMPED_FIRST = 4.0


def _shifted_with_the_loss(facts: RunFacts, step: int, readings: int = 5) -> float | None:
    """How many times its recent median the loss stood at ``step`` (before that step's update),
    when it stood ``JUMPED_FIRST`` times or more and, over the next ``readings`` records, both
    the loss and the gradient norm stayed above halfway (in log) from their recent medians to
    their values at ``step``: a level the run moved to with its loss, not a spike of the
    gradient. A spike's update cannot have made the loss of its own step."""
    grads, loss = facts.series(GRAD_NORM.name), facts.series(LOSS.name)
    if grads is None or loss is None:
        return None
    shifted = [_stayed_up(*series, step, readings) for series in (grads, loss)]
    if None in shifted or shifted[1] < JUMPED_FIRST:
        return None
    return shifted[1]


def _stayed_up(steps: np.ndarray, values: np.ndarray, step: int, readings: int) -> float | None:
    """The value at ``step`` over the median of the 10 before it, when each of the next
    ``readings`` values stayed above their geometric mean (None otherwise, or when not all
    are finite and positive)."""
    at = np.flatnonzero(steps == step)
    if not len(at) or at[0] < 3:
        return None
    i = at[0]
    before, now, after = values[max(i - 10, 0) : i], values[i], values[i + 1 : i + 1 + readings]
    window = np.concatenate([before, [now], after])
    if len(after) < readings or not (np.isfinite(window).all() and (window > 0).all()):
        return None
    base = float(np.median(before))
    if now <= base or not (after > math.sqrt(now * base)).all():
        return None
    return float(now / base)


def _in_a_climb(facts: RunFacts, step: int) -> bool:
    """Whether the loss was already climbing (a loss divergence found) before ``step``."""
    return facts.climbing_from is not None and step > facts.climbing_from


# A loss spike this many times above every loss of the steps after it was a one-off event.
ONE_OFF = 10.0
# A loss spike this many times above every loss after it was the peak of what followed: the
# batch knocked the weights, and a break that followed was the knock's doing, not growth.
PEAK_FIRST = 4.0


# Evidence of a one-off event: the steps after it until the loss was back to normal (None when
# it never came back).
BACK_WITHIN = "back_within_steps"

# Steps after a one-batch jump of the loss and gradient within which a break is that batch's:
# one plain gradient step from a gradient hundreds of times its size throws the weights past
# anywhere the run could step back from, and the steps after compound it.
THROWN_INTO_BREAK = 3


# A batch whose inputs' RMS stood this many times the median of the batches before it is unlike
# the data the run trained on (pixels left unnormalised, millivolts for volts, power for log
# power): sampling moves a batch's RMS by tens of percent, not tenfold.
INPUT_OUTLIER = 10.0
INPUT_HISTORY = (10, 50)  # the fewest and the most batches before it that it is judged against


def _input_outlier(facts: RunFacts, lag: int = 2, within: int = 50) -> Found | None:
    """A loss or gradient spike at most ``lag`` steps after a batch whose floating-point
    inputs' RMS stood ``INPUT_OUTLIER`` times the median of the batches before it, with the
    loss at that batch still finite (a NaN it made is named by its producer): that batch made
    the spike, whatever the run did after."""
    inputs, loss = facts.series(INPUT_RMS.name), facts.series(LOSS.name)
    if inputs is None or loss is None:
        return None
    steps, rms = inputs
    fewest, most = INPUT_HISTORY
    spikes = [
        f for f in facts.of(LOSS_SPIKE, GRAD_NORM_SPIKE, GRADIENT_SPIKE) if f.severity != "info"
    ]
    for spike in sorted(spikes, key=lambda f: f.step):
        for k in np.flatnonzero((steps >= spike.step - lag) & (steps <= spike.step)):
            before = rms[max(k - most, 0) : k]
            before = before[np.isfinite(before)]
            at = loss[1][loss[0] == steps[k]]
            if len(before) < fewest or not len(at) or not np.isfinite(at[0]):
                continue
            usual = float(np.median(before))
            if not usual > 0 or not rms[k] >= INPUT_OUTLIER * usual:
                continue
            step = int(steps[k])
            ev: dict[str, Any] = {
                "input_rms": float(rms[k]),
                "usual_input_rms": usual,
                "input_ratio": float(rms[k] / usual),
                "spike": spike.evidence,
                BACK_WITHIN: _loss_back_within(loss, step, within),
            }
            summary = (
                f"one batch at step {step}: its inputs' RMS was {rms[k] / usual:.3g}x that of "
                f"the batches before it, and the {_spike_of(spike)} spiked "
                + ("at it" if spike.step == step else f"{spike.step - step} step(s) later")
                + "; an outlier in the data (inputs mis-scaled or unnormalised)"
            )
            changed = _scale_changed_at(steps, rms, k, usual, fewest)
            if changed is not None:  # not one batch: every batch since was as large
                ev["scale_changed_at"] = changed
                summary = (
                    f"the data changed scale at step {changed}: its inputs' RMS rose "
                    f"{rms[k] / usual:.3g}x the batches' before and stayed there (a unit changed "
                    f"upstream, a normalisation dropped); the {_spike_of(spike)} spiked at step "
                    f"{spike.step}"
                )
            summary += _batches_behind([spike], ev)
            return Found(summary, step, [], ev)
    return None


def _scale_changed_at(
    steps: np.ndarray, rms: np.ndarray, k: int, usual: float, fewest: int
) -> int | None:
    """The step the inputs' RMS rose ``INPUT_OUTLIER`` times ``usual`` and stayed there up to
    record ``k``, when the ``fewest`` records before ``k`` were all that high (the data changed
    scale, not one batch); None otherwise."""
    high = rms[: k + 1] >= INPUT_OUTLIER * usual
    if k < fewest or not high[k - fewest : k].all():
        return None
    start = k
    while start > 0 and high[start - 1]:
        start -= 1
    return int(steps[start])


def _threw_into_a_break(
    facts: RunFacts, spike: Finding, with_gradient: bool, after: np.ndarray
) -> int | None:
    """The steps from a one-batch loss ``spike`` (``ONE_OFF`` times its baseline or more, with
    the gradient spike it made) to where the run broke (at the spike itself when the climb is
    dated from there), when that was ``THROWN_INTO_BREAK`` or fewer and either the loss of the
    step ``after`` it was ``ONE_OFF`` times below it (the next batch was not like it: no change
    of the data from there on) or the loss rose more times over than the gradient norm did
    (:func:`_error_made_the_gradient`): the batch's update threw the weights and the run never
    came back. None otherwise."""
    broke, ratio = facts.broke_at, spike.evidence.get("ratio", 0.0)
    if broke is None or not with_gradient or not ratio >= ONE_OFF:
        return None
    unlike_the_next = len(after) and after[0] <= spike.evidence.get(LOSS.name, math.nan) / ONE_OFF
    if not unlike_the_next and not _error_made_the_gradient(facts, spike):
        return None
    return broke - spike.step if 0 <= broke - spike.step <= THROWN_INTO_BREAK else None


def _gradient_over_loss(facts: RunFacts, step: int) -> float | None:
    """How many times as many times over its baseline the gradient norm spiked at ``step`` as
    the loss did over its own (None without both spikes there). A batch's error drives the loss
    up faster than the gradient (a squared error by the square of the error's growth, the
    gradient by the error itself): at most 1. A network amplifying its gradient through depth
    or time (a recurrence exposed by longer sequences) drives it up hundreds of times with the
    loss barely moved: ``ONE_OFF`` or more."""
    grads = [g.evidence.get("ratio") for g in facts.of(GRAD_NORM_SPIKE) if g.step == step]
    losses = [f.evidence.get("ratio") for f in facts.of(LOSS_SPIKE) if f.step == step]
    if not grads or not losses or grads[0] is None or losses[0] is None or not losses[0] > 0:
        return None
    return float(grads[0] / losses[0])


def _amplified_at(facts: RunFacts, step: int) -> float | None:
    """:func:`_gradient_over_loss` at ``step`` when ``ONE_OFF`` or more: the network multiplied
    the gradient on its way back (None otherwise)."""
    times = _gradient_over_loss(facts, step)
    return times if times is not None and times >= ONE_OFF else None


# A loss spike ONE_OFF times its baseline or more, with the gradient norm's spike at least this
# share of it (and inputs within INPUT_OUTLIER of their usual size): the loss was multiplied as a
# whole. A batch's error drives the loss faster than the gradient: a squared error by the square
# of the error's growth (the gradient over the loss spiked 1/sqrt(ratio) as much, under 0.32 at a
# 10x loss), a Huber, L1 or cross-entropy loss with the gradient bounded, less still; a loss
# multiplied by a number (a weight in percent, a sum over a batch left undivided) multiplies
# its gradient by the same number.
SCALED_AS_A_WHOLE = 0.5


def _loss_scaled_whole(facts: RunFacts, spike: Finding) -> bool:
    """The loss at ``spike`` stood ``ONE_OFF`` times the median of the ``SCALED_OVER`` records
    before it or more, the gradient norm (before clipping, where clipped) at least
    ``SCALED_AS_A_WHOLE`` as many times its own, and the batch's inputs under ``INPUT_OUTLIER``
    times theirs: the loss was multiplied for that step, not made by a batch's error (see
    ``SCALED_AS_A_WHOLE``)."""
    loss = _over_recent(facts.series(LOSS.name), spike.step)
    grads = facts.grad_norm_made
    gradient = _over_recent(grads, spike.step)
    if not loss >= ONE_OFF or not gradient >= SCALED_AS_A_WHOLE * loss:
        return False
    return not _over_recent(facts.series(INPUT_RMS.name), spike.step) >= INPUT_OUTLIER


SCALED_OVER = 20  # the records before a spike whose median it is measured against


def _over_recent(series: tuple[np.ndarray, np.ndarray] | None, step: int) -> float:
    """The value at ``step`` over the median of the finite values of the ``SCALED_OVER``
    records before it (NaN without both, or with fewer than half of those before)."""
    if series is None:
        return math.nan
    steps, values = series
    at = values[steps == step]
    before = values[(steps < step) & (steps >= step - SCALED_OVER) & np.isfinite(values)]
    if not len(at) or len(before) < SCALED_OVER // 2 or not np.median(before) > 0:
        return math.nan
    return float(at[0] / np.median(before))


def _error_made_the_gradient(facts: RunFacts, spike: Finding) -> bool:
    """The loss at ``spike`` rose at least as many times over its baseline as the gradient norm
    did over its own (:func:`_gradient_over_loss` at most 1): a batch whose error made the spike
    is the batch's, even when the thrown weights keep the next losses high."""
    times = _gradient_over_loss(facts, spike.step)
    return times is not None and times <= 1.0


def _spike_of(f: Finding) -> str:
    return "loss" if f.kind == LOSS_SPIKE.name else "gradient"


def _loss_back_within(loss: tuple[np.ndarray, np.ndarray], step: int, within: int) -> int | None:
    """Steps after ``step`` until the loss's running median of 5 was back under 1.5x its median
    over the 50 steps before it (None when not within ``within``)."""
    steps, values = loss
    before = values[(steps < step) & (steps >= step - 50) & np.isfinite(values)]
    after = values[(steps > step) & (steps <= step + within)]
    if not len(before) or len(after) < 5 or not np.isfinite(after).all():
        return None
    return _settled(after, float(np.median(before)))


def _settled(after: np.ndarray, baseline: float, window: int = 5) -> int | None:
    """Steps until the running median (of ``window``) of the finite losses ``after`` a spike
    stood within half its ``baseline``'s size of it; None when it never did."""
    medians = _running_medians(after, window)
    back = np.flatnonzero(_within_half(medians, baseline))
    return int(back[0]) + window if len(back) else None


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


def _data_outlier(facts: RunFacts, within: int = 50, window: int = 5) -> Found | None:
    """A loss spike in one step (the step before rose less than a ``ONE_OFF``-th of the way:
    the weights that batch met were those of a calm run, so the batch made it) that the run got
    over: within ``within`` steps the loss's running median (of
    ``window``) is back under 1.5x its baseline, or every loss of those steps stays
    ``ONE_OFF`` times below the spike; with nothing that broke the run on the way, unless the
    spike, ``ONE_OFF`` times its baseline, stayed ``PEAK_FIRST`` times above all that followed
    (the knock broke the run), or the run broke within ``THROWN_INTO_BREAK`` steps of it, with
    a gradient spike of its own (:func:`_threw_into_a_break`). One batch unlike the others
    (with the gradient spike it caused, when there was one); an adaptive optimizer can take
    tens of steps to settle after the step it took."""
    found = _input_outlier(facts, within=within)
    if found is not None:
        return found
    loss = facts.series(LOSS.name)
    if loss is None:
        return None
    steps, values = loss
    grads = {f.step for f in facts.of(GRAD_NORM_SPIKE, GRADIENT_SPIKE)}
    breaks = [f.step for f in facts.of(NONFINITE, LOSS_DIVERGENCE, GRADIENT_GROWTH) if _breaks(f)]
    for spike in facts.of(LOSS_SPIKE):
        baseline = spike.evidence.get("baseline")
        after = values[(steps > spike.step) & (steps <= spike.step + within)]
        before = values[steps == spike.step - 1]
        peak = spike.evidence.get(LOSS.name, math.nan)
        thrown = _threw_into_a_break(facts, spike, spike.step in grads, after)
        settling = len(after) >= window and np.isfinite(after).all()  # finite steps to read
        if not baseline or not settling and thrown is None:
            continue
        if len(before) and not before[0] - baseline <= (peak - baseline) / ONE_OFF:
            continue  # the loss was already climbing into it: a swing, not one batch
        if _replaced_at(facts, spike.step, grads):
            continue  # the weights changed under it, not the batch: an EMA swap, a reload
        if _loss_scaled_whole(facts, spike) and _recurring(facts, spike) is None:
            # the loss itself was multiplied (a weight, a sum) once: no batch of its own; one
            # the stream mixes in at a spacing is a kind of batch it holds (a burst week's)
            continue
        if _overstepped_before(facts, spike.step) is not None:
            continue  # the step before threw the weights: the batch met them where they landed
        if _gradient_risen_before(facts, spike.step):
            continue  # gradients grown for steps drove the weights there: no batch of its own
        if _restarted_before(facts, spike.step) is not None:
            continue  # the optimizer started again from nothing: its first steps threw them
        if _raised_before(facts, spike.step) is not None:
            continue  # the learning rate was raised at a stroke: its steps threw them
        back = None if thrown is not None else _settled(after, baseline, window)
        knocked = thrown is not None or (
            peak >= PEAK_FIRST * after.max() and peak >= ONE_OFF * baseline
        )
        if thrown is not None:
            settled = within
            outcome = "its update threw the weights so far that the run never came back" + (
                f", and broke {thrown} step(s) later" if thrown else ""
            )
        elif back is not None:
            settled = back
            outcome = f"was back to normal within {settled} steps"
        elif peak >= ONE_OFF * after.max():
            # Not back, but nothing after came near it: one batch knocked the model off its
            # fit (an adaptive step carries the kick for a while), and the run went on.
            settled = within
            outcome = "left the run knocked off its fit, yet never near that peak again"
        elif knocked:
            settled = within
            outcome = f"knocked the run off its fit; nothing after came within {PEAK_FIRST:g}x"
        else:
            continue
        if not knocked and any(spike.step <= b <= spike.step + settled for b in breaks):
            continue  # it broke the run on the way: a blow-up that calmed down, no bad batch
        ev: dict[str, Any] = {
            "spike": spike.evidence,
            "gradient_spike": spike.step in grads,
            BACK_WITHIN: back,
        }
        summary = (
            f"one batch at step {spike.step}: the loss jumped "
            f"{_jump(spike.evidence)} and {outcome}, an "
            "outlier in the data"
        )
        period = _recurring(facts, spike)
        if period is None and _as_rough_before(loss, spike.step):
            continue  # the run had thrown its loss about as far before: its roughness, no batch
        if period is not None:
            ev[RECURS_EVERY] = period
            summary = (
                f"a batch at step {spike.step} of a kind the stream mixes in every {period} "
                f"records: the loss jumped {_jump(spike.evidence)} and {outcome}, as it had "
                "at each before; absorbed each time, not an instability"
            )
        hard = bool(spike.evidence.get(HARD_BATCH))
        if hard:
            summary += (
                "; its gradient was of the usual size and the next loss was back inside the "
                "band before it: a batch the update did not feel (a robust loss capped its "
                "pull; a noisy stream's or a bad one, the run was not harmed)"
            )
        summary += _batches_behind([spike], ev)
        return Found(summary, spike.step, [], ev, severity="info" if period or hard else None)
    return None


# A loss that jumped this share or more of a spike's jump over the median of the ROUGH_LEVEL
# records before it (the rise above that level, as a share of the spike's), in the
# ROUGH_WINDOW records before that spike, among ROUGH_MANY jumps or more of ROUGH_OFTEN of it,
# makes the spike one more of the run's own jumps.
ROUGH_SHARE, ROUGH_WINDOW, ROUGH_LEVEL = 0.5, 100, 9
ROUGH_OFTEN, ROUGH_MANY = 0.1, 5


def _jumps(values: np.ndarray) -> np.ndarray:
    """Each finite loss over the median of the ``ROUGH_LEVEL`` finite losses before it (NaN
    where there are fewer, or that median is not positive)."""
    out = np.full(len(values), np.nan)
    if len(values) <= ROUGH_LEVEL:
        return out
    levels = _running_medians(values[:-1], ROUGH_LEVEL)
    finite = sliding_window_view(np.isfinite(values[:-1]), ROUGH_LEVEL).all(axis=1)
    now = values[ROUGH_LEVEL:]
    read = finite & (levels > 0) & np.isfinite(now)
    out[ROUGH_LEVEL:][read] = now[read] / levels[read]
    return out


def _as_rough_before(loss: tuple[np.ndarray, np.ndarray], step: int) -> bool:
    """Whether, in the ``ROUGH_WINDOW`` records before ``step``, the loss rose above the
    records before it by ``ROUGH_SHARE`` of what it rose by at ``step`` or more (each over the
    median of the ``ROUGH_LEVEL`` before it), and by ``ROUGH_OFTEN`` of it at ``ROUGH_MANY``
    records or more: a run that throws its loss about (an adaptive step far too large, a batch
    size of one) makes jumps like it of its own, often, where one bad batch stands out of a calm
    run by orders of magnitude (and a stream's occasional harder batch is one of a few)."""
    steps, values = loss
    at = int(np.searchsorted(steps, step))
    if at >= len(steps) or steps[at] != step or at < ROUGH_LEVEL:
        return False
    jumps = _jumps(values[max(0, at - ROUGH_WINDOW - ROUGH_LEVEL) : at + 1])
    now, before = jumps[-1], jumps[ROUGH_LEVEL:-1]
    before = before[np.isfinite(before)]
    if not now > 1 or not len(before) or not before.max() - 1 >= ROUGH_SHARE * (now - 1):
        return False
    return int((before - 1 >= ROUGH_OFTEN * (now - 1)).sum()) >= ROUGH_MANY


# The weights' norm moved this many times its typical step-to-step change in one step, with no
# gradient spike to move it: something other than the optimizer replaced the weights.
REPLACED = 30.0


def _norm_moves(
    facts: RunFacts, step: int, typical_of: int = 20
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """How far the weights' norm moved by the update of the record before ``step`` and by that
    of ``step`` itself, each over the median move of the ``typical_of`` records before them;
    and the gradient norm of those two records over its median before them (None without the
    gradient norm). None without enough finite norms up to ``step``."""
    norms = _finite_until(facts, PARAM_NORM.name, step)
    if norms is None:
        return None
    steps, values = norms
    if len(values) < typical_of + 2 or steps[-1] != step:
        return None
    changes = np.abs(np.diff(values))
    typical = float(np.median(changes[-typical_of - 2 : -2]))
    if not typical > 0:
        return None
    moved = changes[-2:] / typical
    grad = _finite_until(facts, GRAD_NORM.name, step)
    g = None if grad is None else grad[1][-typical_of - 2 :]
    if g is None or len(g) < 3:
        return moved, None
    return moved, g[-2:] / float(np.median(g[:-2]))


def _replaced_at(facts: RunFacts, step: int, grads: set[int]) -> bool:
    """Whether the weights were replaced between steps at ``step`` (see
    :func:`_weights_replaced`) with no gradient spike at that step that could have moved them
    there (``grads``: the steps of the run's gradient spikes), or one the optimizer's bounded
    step cannot have followed that far (:func:`_beyond_a_bounded_step`)."""
    if step in grads and not _beyond_a_bounded_step(facts, step):
        return _beyond_any_step(facts, step)
    return _weights_replaced(facts, step)


def _weights_replaced(facts: RunFacts, step: int) -> bool:
    """The weights' norm changed at ``step`` (or the record before it) by ``REPLACED`` times its
    median change over the records before, with no gradient that large to move it: weights
    swapped for their moving average, reloaded from a checkpoint or averaged with a replica's
    between steps. A batch moves the weights only through its gradient (and an adaptive step
    not even then)."""
    if _beyond_any_step(facts, step):
        return True  # further than any step of this optimizer reaches, whatever the gradient
    moves = _norm_moves(facts, step)
    if moves is None:
        return False
    if _raised_before(facts, step) is not None or _burst_before(facts, step):
        # a learning rate raised at a stroke moves them that far on its own, for as long as
        # its larger steps take to settle against the moves the records before it made
        return False
    if _beyond_a_bounded_step(facts, step):
        # no gradient moves an Adam or sign step's weights that far: one tensor replaced (a
        # head a resume left at its fresh init) is enough, whatever the norm of them all did
        return True
    if moves[0].max() < REPLACED:
        return False
    if _gradient_risen_before(facts, step):
        return False  # momentum carried the grown gradients of the steps before into this one
    # and no large gradient moved them: an update from a gradient grown far above its usual
    # size (an explosion the spike test, reading growth, did not flag) moves them as far. An
    # adaptive step (RMSprop's, Adagrad's) divides by a running scale a large gradient barely
    # moves yet: one ORDINARY times its usual size moves every weight about as far as the rate,
    # ten times and more an ordinary step's (Adam's momentum takes a tenth of it: it does not)
    large = ORDINARY if facts.run.config.get(OPTIMIZER_FAMILY) == "adaptive" else REPLACED
    return moves[1] is None or float(moves[1].max()) < large


# An Adam step moves each weight by at most about (1 - beta1) / sqrt(1 - beta2) = 3.2 times the
# rate, whatever the gradient (a sign step by the rate itself), and a typical one by a tenth of
# that or more: a tensor's norm changing BOUNDED_STEP times its typical update in one record
# (a norm changes by no more than the update) was changed by something other than the step.
BOUNDED_STEP = 30.0
BOUNDED_FAMILIES = ("adam", "sign")


def _beyond_a_bounded_step(facts: RunFacts, step: int) -> bool:
    """Under an optimizer whose step does not grow with the gradient (Adam's, a sign step's),
    whether some tensor's norm changed at ``step`` by ``BOUNDED_STEP`` times its typical update
    (its median update ratio before ``step``, times its norm) or more: a change no gradient,
    however large, makes in one such step."""
    if facts.run.config.get(OPTIMIZER_FAMILY) not in BOUNDED_FAMILIES:
        return False
    for name in facts.names:
        if not UPDATE_RATIO.owns(name) or "/" not in name:
            continue
        tensor = name.split("/", 1)[1]
        ratios, norms = facts.series(name), facts.series(PARAM_NORM.key(tensor))
        if norms is None:
            continue
        steps, values = norms
        now, before = values[steps == step], values[steps == step - 1]
        read = ratios[1][(ratios[0] < step) & np.isfinite(ratios[1])]
        sizes = values[np.isin(steps, ratios[0][(ratios[0] < step) & np.isfinite(ratios[1])])]
        if not len(now) or not len(before) or not len(read) or len(sizes) != len(read):
            continue
        typical = float(np.median(read * sizes))
        if typical > 0 and abs(float(now[0] - before[0])) >= BOUNDED_STEP * typical:
            return True
    return False


# How far one optimizer step can move a weight, in learning rates: Adam's by (1 - beta1) /
# sqrt(1 - beta2) at most (a giant gradient after small ones: 3.2 at the defaults), RMSprop's
# by 1 / sqrt(1 - alpha) (10), over 1 - momentum with momentum, Adagrad's and a sign step's by
# the rate itself; REACH_MARGIN times that, for NAdam's look-ahead term. Rprop's steps grow
# by a factor of their own, Adadelta's rate is unit-free, an optimizer without a plain running
# square (AdaBelief's centred one) can divide by next to nothing: no reach for those.
REACH_MARGIN = 2.0
SELF_SIZED = ("Rprop",)


def _step_reach(facts: RunFacts) -> float | None:
    """The most one step of the run's optimizer moves a weight, in learning rates, with
    ``REACH_MARGIN``; None where the step is not bounded by the rate."""
    config = facts.run.config
    family, name = config.get(OPTIMIZER_FAMILY), facts.optimizer
    kept, momentum = config.get(SECOND_MOMENT_DECAY), config.get(FIRST_MOMENT_DECAY) or 0.0
    if family == "sign" and name not in SELF_SIZED:
        return REACH_MARGIN
    if family not in ("adam", "adaptive") or name in UNIT_FREE_RATE or kept is None:
        return None
    if kept >= 1.0:  # Adagrad's sum holds each step's own square
        return REACH_MARGIN / (1.0 - momentum)
    if family == "adam":
        return REACH_MARGIN * max(1.0, (1.0 - momentum) / math.sqrt(1.0 - kept))
    return REACH_MARGIN / (math.sqrt(1.0 - kept) * (1.0 - momentum))


def _beyond_any_step(facts: RunFacts, step: int) -> bool:
    """Whether the norm of all the weights changed into ``step``, or into the record before it,
    by more than the optimizer's steps between those records can move it: ``count`` weights
    each moved its reach (:func:`_step_reach`) at the highest learning rate of any group,
    ``reach * lr * sqrt(count)`` a step. No gradient moves them that far: something put them
    there (a checkpoint reloaded, noise added, a layer initialised again)."""
    reach, count = _step_reach(facts), facts.run.config.get(PARAMETER_COUNT)
    norms = _finite_until(facts, PARAM_NORM.name, step)
    if reach is None or not count or norms is None or len(norms[0]) < 3:
        return False
    steps, values = norms
    if steps[-1] != step:
        return False
    for i in (len(steps) - 1, len(steps) - 2):
        gap = int(steps[i] - steps[i - 1])  # optimizer steps between the two records
        within = [
            lr[(at > steps[i - 1]) & (at <= steps[i]) & _positive(lr)]
            for at, lr in facts.learning_rates
        ]
        rate = max((float(r.max()) for r in within if len(r)), default=None)
        if rate is None:
            return False
        if abs(float(values[i] - values[i - 1])) > reach * rate * math.sqrt(count) * gap:
            return True
    return False


# Records before a step whose gradient, standing ``ORDINARY`` times its level before them,
# moved the weights there: momentum sums a few steps' gradients into each update.
RISEN_OVER = 5


def _gradient_risen_before(facts: RunFacts, step: int, typical_of: int = 20) -> bool:
    """Whether the median gradient norm of the ``RISEN_OVER`` records before ``step`` stood
    ``ORDINARY`` times or more above the median of the ``typical_of`` before them: gradients
    piling up (a ``zero_grad`` skipped, a loss scaled up step by step) move the weights further
    each step, with no one step's gradient far out of line."""
    grad = _finite_until(facts, GRAD_NORM.name, step - 1)
    if grad is None or len(grad[1]) < RISEN_OVER + typical_of:
        return False
    recent, before = grad[1][-RISEN_OVER:], grad[1][-RISEN_OVER - typical_of : -RISEN_OVER]
    typical = float(np.median(before))
    return typical > 0 and float(np.median(recent)) >= ORDINARY * typical


def _replaced_modules(facts: RunFacts, step: int) -> list[str]:
    """The modules whose weights were replaced between steps at ``step`` (a checkpoint that
    reloaded one part, a codebook reset): those of the tensors whose update-to-weight ratio
    there, or at the record before, stood ``REPLACED`` times or more above its median over the
    50 records before, the largest jump first. Empty where the ratios were not recorded then."""
    jumps = []
    for name in facts.names:
        if not UPDATE_RATIO.owns(name):
            continue
        steps, values = facts.series(name)
        now = values[(steps >= step - 1) & (steps <= step) & np.isfinite(values)]
        before = values[(steps < step - 1) & (steps >= step - 51) & np.isfinite(values)]
        if len(now) and len(before) >= 3 and np.median(before) > 0:
            jump = float(now.max() / np.median(before))
            if jump >= REPLACED:
                tensor = name.split("/", 1)[1]
                jumps.append((jump, tensor.rsplit(".", 1)[0] if "." in tensor else tensor))
    return list(dict.fromkeys(module for _, module in sorted(jumps, reverse=True)))


# The update before a loss spike moved the weights' norm this many times its usual step, on a
# gradient under ``ORDINARY`` times its usual size: the optimizer's step made the spike.
OVERSTEPPED, ORDINARY = 10.0, 3.0


def _overstepped_before(facts: RunFacts, step: int) -> float | None:
    """How many times its usual step the update just before ``step`` moved the weights' norm,
    when that was ``OVERSTEPPED`` times or more on an ordinary gradient (optimizer state lost on
    a resume, a learning-rate glitch): the loss at ``step`` then met weights the optimizer had
    thrown, whatever batch it read. None otherwise."""
    moves = _norm_moves(facts, step)
    if moves is None or moves[1] is None:
        return None
    moved, grad = float(moves[0][0]), float(moves[1][0])
    return moved if moved >= OVERSTEPPED and grad < ORDINARY else None


# Steps after the optimizer's state started again within which a loss spike is its doing, and
# how many times the median of the losses before it the loss must jump when no spike was found.
RESTART_WITHIN, RESTART_JUMP = 3, 3.0


def _restarted_before(facts: RunFacts, step: int) -> int | None:
    """The step, ``RESTART_WITHIN`` or fewer before ``step``, at which the optimizer's state
    started again from nothing (its step count back to 1: a resume that loaded the weights and
    not the optimizer); None if it did not."""
    restarts = facts.series(OPTIMIZER_RESTARTED.name)
    if restarts is None:
        return None
    near = restarts[0][(restarts[0] <= step) & (restarts[0] >= step - RESTART_WITHIN)]
    return int(near[-1]) if len(near) else None


def _restart_jolt(facts: RunFacts, before: int = 20) -> Found | None:
    """The loss jumped ``RESTART_JUMP`` times the median of the ``before`` losses before it,
    within ``RESTART_WITHIN`` steps of the optimizer's state starting again from nothing: its
    first steps, with no second moment to scale them, threw the weights."""
    restarts, loss = facts.series(OPTIMIZER_RESTARTED.name), facts.series(LOSS.name)
    if restarts is None or loss is None:
        return None
    steps, values = loss
    for at, count in zip(*restarts, strict=True):
        usual = values[(steps < at) & (steps >= at - before) & np.isfinite(values)]
        after = (steps >= at) & (steps <= at + RESTART_WITHIN) & np.isfinite(values)
        if len(usual) < before // 2 or not after.any() or not np.median(usual) > 0:
            continue
        i = np.flatnonzero(after)[int(np.argmax(values[after]))]
        jump = float(values[i] / np.median(usual))
        if jump >= RESTART_JUMP:
            return Found(
                f"the loss jumped {jump:.3g}x at step {int(steps[i])}, just after the optimizer's "
                f"state started again from nothing at step {int(at)} (after {int(count)} steps): "
                "a resume that loaded the model's weights but not the optimizer's state",
                int(steps[i]),
                [],
                {"optimizer_restarted_at": int(at), "jump": jump},
            )
    return None


def _burst_jolt(facts: RunFacts, before: int = 20) -> Found | None:
    """The loss rose ``RESTART_JUMP`` times the median of the ``before`` losses before a burst
    of the learning rate (see :func:`_rate_bursts`), during it or ``CONFIRMED_SOON`` steps
    after: a jolt the glitch made, though no loss spike was found (a loss near zero climbs out
    of its floor over a few steps rather than in one)."""
    loss = facts.series(LOSS.name)
    if loss is None:
        return None
    steps, values = loss
    for rose, back, factor in _rate_bursts(facts):
        usual = values[(steps < rose) & (steps >= rose - before) & np.isfinite(values)]
        during = (steps >= rose) & (steps <= back + CONFIRMED_SOON) & np.isfinite(values)
        if len(usual) < before // 2 or not during.any() or not np.median(usual) > 0:
            continue
        i = np.flatnonzero(during)[int(np.argmax(values[during]))]
        jump = float(values[i] / np.median(usual))
        if jump >= RESTART_JUMP or _past_its_spread(float(values[i]), usual):
            return Found(
                f"the loss rose {jump:.3g}x by step {int(steps[i])}, after "
                f"{_burst_said((rose, back, factor))}: a glitch of the schedule, over before the "
                "run could train at it",
                rose,
                [],
                {"learning_rate_raised_at": rose, "put_back_at": back, "jump": jump},
            )
    return None


# How many of its median absolute deviations a loss must rise above its median, and above every
# loss before, for a rate burst's jolt: a ratio fits a loss near zero; a language model's
# loss in nats has a floor far from zero, and a glitch that lifts it from 2.7 to 3.6 (set 119's
# GLM restart at 40x the rate) is as plain as a 3x jump elsewhere.
JOLT_SPREADS = 6.0


def _past_its_spread(value: float, usual: np.ndarray) -> bool:
    """Whether ``value`` stands above every loss of ``usual`` and ``JOLT_SPREADS`` of their
    median absolute deviations above their median."""
    middle = float(np.median(usual))
    spread = float(np.median(np.abs(usual - middle)))
    return value > float(usual.max()) and spread > 0 and value - middle >= JOLT_SPREADS * spread


def _jolted_by_a_restart(facts: RunFacts, step: int) -> int | None:
    """The step the optimizer's state started again from nothing, when that restart jolted the
    loss (:func:`_restart_jolt`, or a loss spike found within ``RESTART_WITHIN`` steps after
    it) at most ``EXPLOSION_LEAD`` steps before ``step``: what was first seen at ``step`` is
    the jolt's doing."""
    jolt = _restart_jolt(facts)
    restarts = [] if jolt is None else [jolt.evidence["optimizer_restarted_at"]]
    restarts += [r for f in facts.of(LOSS_SPIKE) if (r := _restarted_before(facts, f.step))]
    near = [r for r in restarts if r is not None and 0 <= step - r <= EXPLOSION_LEAD]
    return min(near) if near else None


def _loss_spike(facts: RunFacts) -> Found | None:
    spikes = facts.of(LOSS_SPIKE)
    if not spikes:
        return _put_back_into_a_climb(facts) or _restart_jolt(facts) or _burst_jolt(facts)
    first = spikes[0]
    ev: dict[str, Any] = {"spikes": len(spikes), "first": first.evidence}
    summary = (
        f"{len(spikes)} loss spike(s), the first at step {first.step} ({_jump(first.evidence)})"
    )
    restarted = _restarted_before(facts, first.step)
    if restarted is not None:
        ev["optimizer_restarted_at"] = restarted
        summary += (
            f"; the optimizer's state started again from nothing at step {restarted}: a resume "
            "that loaded the model's weights but not the optimizer's state"
        )
    passed = _passed_just_before(facts, first.step)
    if passed:
        ev["learning_rate_raised_at"] = _raised_before(facts, first.step)
        summary += f"; {passed}"
    summary += _batches_behind(spikes, ev)
    grads = {f.step for f in facts.of(GRAD_NORM_SPIKE, GRADIENT_SPIKE)}
    replaced = [f.step for f in spikes if _replaced_at(facts, f.step, grads)]
    where: list[str] = []
    if replaced:
        ev["weights_replaced_at"] = replaced
        where = _replaced_modules(facts, replaced[0])
        summary += (
            f"; at step {replaced[0]} the weights' norm moved {REPLACED:g}x or more its usual "
            "step: they were replaced between steps (an EMA swap, a checkpoint reload, a "
            "replica sync), not moved by a batch's gradient"
        )
    elif (moved := _overstepped_before(facts, first.step)) is not None:
        ev["overstepped_before"] = moved
        summary += (
            f"; the update just before it moved the weights {moved:.3g}x their usual step on an "
            "ordinary gradient: the optimizer threw them (its state lost on a resume, a "
            "learning-rate glitch), not the batch"
        )
    if all(f.evidence.get(HARD_BATCH) for f in spikes):
        summary += (
            "; each came with a gradient of the usual size and the loss back inside its band "
            "at the next step: hard batches the updates did not feel"
        )
        return Found(summary, first.step, where, ev, severity="info")
    periods = [_recurring(facts, f) for f in spikes]
    # each a batch of a kind the stream recurs with, or one the update did not feel
    absorbed = all(p or f.evidence.get(HARD_BATCH) for p, f in zip(periods, spikes, strict=True))
    if absorbed and any(periods):
        ev[RECURS_EVERY] = next(p for p in periods if p)
        summary += (
            f"; the loss stood out alike every {ev[RECURS_EVERY]} records around each (or the "
            "update did not feel it): a kind of batch that recurs in the stream, absorbed each "
            "time"
        )
        return Found(summary, first.step, where, ev, severity="info")
    return Found(summary, first.step, where, ev)


def _sharpness(facts: RunFacts) -> Found | None:
    """The earliest evidence of steps beyond the stability limit: a probe, steps that kept
    overshooting, an overshoot just before the run broke, a run broken by its first updates,
    a learning rate still rising when the loss blew up, or one raised at a stroke just before
    the run was jolted."""
    checks = (
        _measured_sharpness,
        _unstable_steps,
        _overshoot_before_break,
        _broke_at_once,
        _lr_rising_into_break,
        _lr_raised_into_a_jolt,
        _trained_into_a_blowup,
    )
    found = [(check, f) for check in checks if (f := check(facts)) is not None]
    how, first = min(
        found,
        key=lambda found: math.inf if found[1].first_step is None else found[1].first_step,
        default=(None, None),
    )
    if first is not None and first.first_step is not None:
        restarted = _restarted_with(facts, first.first_step)
        exploded = _exploded_through_time(facts, first.first_step)
        if restarted is not None:
            first.consequence_of = (
                f"the optimizer's state started again from nothing at step {restarted}, its "
                "learning rate with it: a resume that restored neither the optimizer nor its "
                "schedule, whose first steps crossed 2/sharpness"
            )
        elif how in (_unstable_steps, _overshoot_before_break, _trained_into_a_blowup) and (
            passed := _passed_just_before(facts, first.first_step)
        ):
            first.consequence_of = (
                f"{passed}: the steps that overshot were that raise's jolt, and the run "
                "trained on at the rates that followed"
            )
        elif (fast := _fast_group(facts)) is not None:
            first.consequence_of = (
                f"the optimizer group {fast.evidence['group']} ({layer_span(fast.where)}) trains "
                f"at learning rate {fast.evidence['lr']:.3g}, "
                f"{fast.evidence['lr'] / fast.evidence['rest_lr']:.3g}x the rest: its steps are "
                "the ones past the limit, not the rate the rest trains at"
            )
        elif exploded is not None and how in (_unstable_steps, _overshoot_before_break):
            first.consequence_of = (
                f"the gradient of the recurrent {exploded.where} exploded at step "
                f"{exploded.step}, {exploded.evidence.get('ratio', math.nan):.3g}x the next one, "
                "and its update wrecked the weights: a product of Jacobians through time, which "
                "overshoots along any direction, not a step size above 2/curvature"
            )
    return first


def _fast_group(facts: RunFacts) -> Found | None:
    """An optimizer group set far above the rest (:func:`_rate_set_apart`) and judged to harm
    the run (a rate no Adam-like group runs at, or the break's gradients growing in that group
    alone): the group whose steps overshoot, when steps do."""
    apart = _rate_set_apart(facts)
    if apart is None or apart.severity == "info":
        return None
    return apart if apart.evidence["lr"] > apart.evidence["rest_lr"] else None


def _exploded_through_time(facts: RunFacts, step: int) -> Finding | None:
    """The one gradient explosion (evidence ``WRECKED_WEIGHTS``) in a module a recurrence
    applies, at ``step`` or the step before, if any."""
    return next(
        (
            f
            for f in facts.of(GRADIENT_GROWTH)
            if f.evidence.get(WRECKED_WEIGHTS)
            and step - 1 <= f.step <= step
            and any(_inside(f.where or "", m) for m in facts.recurrent_modules)
        ),
        None,
    )


def _restarted_with(facts: RunFacts, step: int) -> int | None:
    """The step the optimizer's state started again from nothing, ``RESTART_WITHIN`` steps or
    fewer either side of ``step``, when that restart jolted the loss."""
    restarted = _jolted_by_a_restart(facts, step + RESTART_WITHIN)
    return restarted if restarted is not None and restarted >= step - RESTART_WITHIN else None


# Steps a run trained at a learning rate (or a larger one) before it broke that prove that
# rate was within the stability limit of the model as it was.
RATE_PROVEN = 50


def _trained_at_that_rate(facts: RunFacts, step: int) -> int:
    """Steps the run had trained, up to ``step``, at a learning rate at least 0.95 of every
    group's rate at ``step``: since its start, or since the last step any group's rate was
    lower (a warm-up, a raise on resume). 0 without learning rates."""
    rates = facts.learning_rates
    if not rates:
        return 0
    since = 0
    for steps, values in rates:
        keep = (steps <= step) & np.isfinite(values)
        steps, values = steps[keep], values[keep]
        if not len(values):
            return 0
        lower = np.flatnonzero(np.abs(values[:-1]) < 0.95 * abs(values[-1]))
        began = int(steps[lower[-1] + 1]) if len(lower) else int(steps[0])
        since = max(since, began)
    return step - since


def _overshoot_before_break(facts: RunFacts, within: int = 10) -> Found | None:
    """The steps just before the run broke overshot along their own direction (a directional
    sharpness ratio at or above 1 before the climb began, or most of those read near the break:
    the step size had passed 2/curvature), at a learning rate the run had not trained at for
    ``RATE_PROVEN`` steps before."""
    broke = facts.broke_at
    series = facts.series(DIRECTIONAL_SHARPNESS_RATIO.name)
    climbed = [f.step for f in facts.of(LOSS_DIVERGENCE, GRADIENT_GROWTH) if f.severity != "info"]
    if broke is None or series is None or not climbed or min(climbed) > broke:
        return None  # a NaN out of the blue (bad data, say) is not a step-size problem
    scaled = _gradient_scaled_at_a_stroke(facts, broke, within)
    if scaled is None and _trained_at_that_rate(facts, broke) >= RATE_PROVEN:
        # the same step size served the run long before it broke: what crossed 2/curvature
        # was the curvature, grown by something else (a decay of the wrong sign, a poisoned
        # step, a longer unroll), and every explosion's last update overshoots
        return None
    steps, ratios = series
    since = broke - within if scaled is None else scaled[0]
    near = (steps <= broke) & (steps >= since) & np.isfinite(ratios)
    near &= ~np.isin(steps, _across_one_step_spikes(facts))
    if not near.any():
        return None
    i = np.flatnonzero(near)[int(np.argmax(ratios[near]))]
    ratio, step = float(ratios[i]), int(steps[i])
    # One reading above 1 counts when it came by the climb's start (once the run is wrecked,
    # readings mean little); after it, most readings must be: a noisy pair of batches can read
    # above 1 on its own.
    if ratio < 1.0 or (step > min(climbed) and np.median(ratios[near]) < 1.0):
        return None
    if _grown_within_the_limit(facts, series, since, step) or _a_burst_read(facts, series, step):
        return None  # the overshoot came once the gradients had exploded, not before
    if _learnt_on_from(facts, step, broke):
        return None  # the run survived that overshoot
    summary = (
        f"the update before step {step} overshot along its own direction ({ratio:.2g}x its "
        f"stability limit), just before the run broke at step {broke}: the learning rate was "
        "above 2/curvature"
    )
    evidence = {"directional_sharpness_ratio": ratio, "broke_at": broke}
    if scaled is not None:
        step, factor = scaled
        summary += (
            f"; the gradient's scale rose {factor:.3g}x at step {step} with the loss unchanged "
            "(a loss summed where it was averaged, a loss weight raised), and the step size "
            "with it"
        )
        evidence["gradient_scaled_at"], evidence["gradient_scale_factor"] = step, factor
    return Found(summary, step, [], evidence)


def _learnt_on_from(facts: RunFacts, step: int, broke: int) -> bool:
    """Whether the run's best sustained loss before it broke (its lowest 5-step running median
    before ``broke``) came wholly after ``step``: it learnt on past what happened there."""
    loss = facts.series(LOSS.name)
    if loss is None:
        return False
    steps, values = loss
    before = np.isfinite(values) & (steps < broke)
    best = _lowest_median(steps[before], values[before])
    return best is not None and best - 4 > step


def _across_one_step_spikes(facts: RunFacts) -> list[int]:
    """The steps whose directional sharpness reading spans a gradient-norm spike that fell
    back by 10x at the next record (a loss scaled once, one bad batch): the reading compares
    the gradients on either side of an update, and across such a spike it measures the spike,
    not the curvature."""
    grad = facts.series(GRAD_NORM.name)
    if grad is None:
        return []
    g_steps, g = grad
    spanned = []
    for spike in facts.of(GRAD_NORM_SPIKE):
        after = g[(g_steps > spike.step) & np.isfinite(g)][:1]
        if len(after) and after[0] * 10 < spike.evidence.get("grad_norm", 0.0):
            spanned += [spike.step, spike.step + 1]
    return spanned


# The gradient norm grew this many times from its lowest in the span before an overshoot while
# the updates stayed within their limit: the growth was not the step size's doing.
GROWN_WITHIN_LIMIT = 8.0


def _grown_within_the_limit(
    facts: RunFacts, ratios: tuple[np.ndarray, np.ndarray], since: int, step: int
) -> bool:
    """Whether the gradient norm grew ``GROWN_WITHIN_LIMIT`` times from its lowest between
    ``since`` and ``step`` while most of the directional sharpness readings taken as it grew (3
    at least) stood below 1: updates within their stability limit descend along their own
    direction, so what grew the gradient was something else (weights multiplying one another,
    a recurrence), and the overshoot read at ``step`` is what the grown gradients did."""
    grad = _finite_until(facts, GRAD_NORM.name, step - 1)
    if grad is None:
        return False
    g_steps, g = grad
    span = g_steps >= since
    if span.sum() < 3:
        return False
    lowest = int(np.argmin(np.where(span, g, np.inf)))
    if not g[-1] >= GROWN_WITHIN_LIMIT * g[lowest]:
        return False
    r_steps, r = ratios
    while_growing = r[(r_steps > g_steps[lowest]) & (r_steps < step) & np.isfinite(r)]
    return len(while_growing) >= 3 and float(np.median(while_growing)) < 1.0


# Directional sharpness readings all under this share of the limit: updates well within it.
WELL_WITHIN = 0.5


def _a_burst_read(facts: RunFacts, ratios: tuple[np.ndarray, np.ndarray], step: int) -> bool:
    """Whether the reading at ``step`` spans the run's first burst of the gradient (see
    :func:`_first_burst`), after updates all well within their limit (three readings or more,
    each under ``WELL_WITHIN``): the reading compares the gradients on either side of the last
    update, so it measures the burst, which no step size past 2/curvature made (that overshoot
    shows in the readings before: a recurrence crossing into explosion, weights multiplying
    one another)."""
    if _first_burst(facts, step) != step:
        return False
    r_steps, r = ratios
    earlier = r[(r_steps < step) & np.isfinite(r)]
    return len(earlier) >= 3 and bool((earlier < WELL_WITHIN).all())


# A gradient norm this many times its recent median, with the loss at its usual level, and held
# at half that or more until the break: the loss itself was rescaled, not a batch gone bad.
SCALED_AT_A_STROKE, SCALE_WINDOW = 4.0, 20


def _gradient_scaled_at_a_stroke(
    facts: RunFacts, broke: int, within: int
) -> tuple[int, float] | None:
    """The step, within ``within`` before the break, at which the gradient norm rose to
    ``SCALED_AT_A_STROKE`` times its median over the readings before and stayed up while the
    loss did not rise with it, and that factor: the gradient, and with it the step of an SGD-
    like optimizer, was scaled at a stroke (accumulated micro-batch losses summed, a loss
    weight raised), so the learning rate the run had trained at no longer set the step. Not
    where the gradient per unit of loss was back at its usual level at the next record: the
    scale was one step's (a loss weight typed wrong once), and the gradient stayed up only
    because the loss it threw did: a gradient spike, whose update broke the run."""
    grads, loss = facts.series(GRAD_NORM.name), facts.series(LOSS.name)
    if grads is None or loss is None:
        return None
    steps, norms = grads
    # a jump on the step before the break is the explosion's own last step: a rescaled loss
    # shows at its first step, before the instability it starts has compounded
    for i in np.flatnonzero((steps >= broke - within) & (steps < broke - 1)):
        before = norms[max(0, i - SCALE_WINDOW) : i]
        before = before[np.isfinite(before)]
        if len(before) < SCALE_WINDOW // 2:
            continue
        usual = float(np.median(before))
        up = SCALED_AT_A_STROKE / 2 * usual
        held = norms[i : np.searchsorted(steps, broke, side="right")]
        if not usual > 0 or not norms[i] >= SCALED_AT_A_STROKE * usual or not np.all(held >= up):
            continue
        if not norms[i - 1] < up:
            continue  # already up the reading before: a growth, not a jump from the usual level
        at = int(steps[i])
        losses = loss[1][(loss[0] < at) & (loss[0] >= at - SCALE_WINDOW) & np.isfinite(loss[1])]
        now = loss[1][loss[0] == at]
        if len(losses) and len(now) and now[0] <= 1.5 * float(np.median(losses)):
            if _scaled_once(steps, norms, loss, i):
                continue
            return at, float(norms[i] / usual)
    return None


def _scaled_once(
    steps: np.ndarray, norms: np.ndarray, loss: tuple[np.ndarray, np.ndarray], i: int
) -> bool:
    """Whether the gradient norm per unit of loss, up ``SCALED_AT_A_STROKE`` times at reading
    ``i``, was under half that at the next reading (against its median over the
    ``SCALE_WINDOW`` readings before): scaled for one step only."""
    loss_at = dict(zip(loss[0].tolist(), loss[1].tolist(), strict=True))

    def ratio(j: int) -> float:
        value = loss_at.get(int(steps[j]), math.nan)
        return norms[j] / value if value > 0 and math.isfinite(value) else math.nan

    if i + 1 >= len(steps):
        return False
    usual = np.array([ratio(j) for j in range(max(0, i - SCALE_WINDOW), i)])
    usual = usual[np.isfinite(usual)]
    if len(usual) < SCALE_WINDOW // 2:
        return False
    return bool(ratio(i + 1) < SCALED_AT_A_STROKE / 2 * float(np.median(usual)))


# Records before a break over which the gradient norm of a run that had trained grew at every
# one, and how many times over, for a plain gradient step past 2/sharpness to be what broke it.
BLOWUP_RECORDS, BLOWUP_GROWTH = 4, 10.0


def _trained_into_a_blowup(facts: RunFacts) -> Found | None:
    """Under a step the gradient scales (SGD, with or without momentum), in a model with no
    recurrence: the loss had fallen to half its first value or less, then the gradient norm
    grew at each of the last ``BLOWUP_RECORDS`` records into the break, ``BLOWUP_GROWTH``
    times or more, with no gradient growth found to have begun ``EXPLOSION_LEAD`` steps or more
    before. A plain gradient step past 2/sharpness overshoots further each step along the
    sharpest direction: the gradient grows geometrically once that direction dominates, after
    the loss has fallen (progressive sharpening), however little the update's own direction
    read of it before (Cohen et al. 2021)."""
    broke = facts.broke_at
    if broke is None or facts.run.config.get(OPTIMIZER_FAMILY) not in GRADIENT_SCALED:
        return None
    grads, loss = facts.series(GRAD_NORM.name), facts.series(LOSS.name)
    if facts.recurrent_modules or grads is None or loss is None:
        return None
    before = loss[1][(loss[0] <= broke) & np.isfinite(loss[1])]
    upto = (grads[0] <= broke) & np.isfinite(grads[1])
    steps, norms = grads[0][upto][-BLOWUP_RECORDS:], grads[1][upto][-BLOWUP_RECORDS:]
    # a loss that fell to half its first value, not below zero: one with no minimum (a
    # likelihood on raw scores) drives its outputs, and its gradients, without end
    if len(before) < 5 or not (before[0] > 0 and 0 < before.min() <= 0.5 * before[0]):
        return None
    if len(norms) < BLOWUP_RECORDS or not np.all(np.diff(norms) > 0):
        return None
    if norms[-1] < BLOWUP_GROWTH * norms[0]:
        return None
    if any(
        f.evidence.get(GROWTH_BEGAN, f.step) < steps[0] - EXPLOSION_LEAD
        for f in facts.of(GRADIENT_GROWTH)
    ):
        return None  # the gradients had been growing long before: no sudden overshoot
    outlier = _data_outlier(facts)
    if outlier is not None and steps[0] < outlier.first_step <= broke:
        return None  # one batch's gradient threw the weights: the growth began with it
    return Found(
        f"the loss had fallen to {before.min():.3g}, then the gradient norm grew at every step "
        f"into the break at step {broke} ({norms[0]:.3g} -> {norms[-1]:.3g} from step "
        f"{int(steps[0])}): plain gradient steps past 2/sharpness, each overshooting further "
        "along the sharpest direction",
        int(steps[0]),
        [],
        {"grad_norm_from": float(norms[0]), "grad_norm_to": float(norms[-1]), "broke_at": broke},
    )


# A run whose loss went non-finite within this many steps of its start, never back at or below
# its first loss on the way and ONE_OFF times above it before it broke, was broken by its first
# updates (too few finite losses for the divergence detector's opening window to fill), when
# the first of them threw the weights (their norm THROWN times where it started) from a
# gradient under BORN_EXPLODED times that norm.
OPENING_STEPS, THROWN = 10, 2.0


def _blew_up_from_the_start(facts: RunFacts) -> Found | None:
    """The first updates blew the run up within ``OPENING_STEPS`` steps (see there)."""
    loss = facts.series(LOSS.name)
    if loss is None:
        return None
    steps, values = loss
    bad = steps[~np.isfinite(values)]
    if not len(bad) or bad[0] > OPENING_STEPS or steps[0] != 0 or not values[0] > 0:
        return None
    broke = int(bad[0])
    grads, weights = facts.series(GRAD_NORM.name), facts.series(PARAM_NORM.name)
    if grads is None or weights is None or not grads[0][0] == 0 == weights[0][0]:
        return None
    if not grads[1][0] < BORN_EXPLODED * weights[1][0]:
        return None  # exploded before any update: the initialisation's doing
    first_update = weights[1][weights[0] == 1]
    if not (len(first_update) and first_update[0] >= THROWN * weights[1][0]):
        return None  # not thrown at once: a gradient that grew on its own threw them later
    opening = values[(steps > 0) & (steps < broke)]
    opening = opening[np.isfinite(opening)]
    if not len(opening) or opening.min() <= values[0] or opening.max() < ONE_OFF * values[0]:
        return None
    return Found(
        f"the first updates blew the run up: the loss rose from {values[0]:.4g} to "
        f"{opening.max():.4g} and was non-finite by step {broke}, never back where it "
        "started (the step size is far above the stability limit)",
        0,
        [],
        {"first_loss": float(values[0]), "peak": float(opening.max()), "broke_at": broke},
    )


def _broke_at_once(facts: RunFacts) -> Found | None:
    """The first updates sent the loss far above where it started and it never came back
    (gradients that exploded before any update are the initialisation's doing instead). A run
    that came back on its own below where it started trained at those rates: its jolt is then
    a consequence of what threw the first updates."""
    found = [f for f in facts.of(LOSS_DIVERGENCE) if f.evidence.get(BROKE_AT_ONCE)]
    if any(f.step == 0 for f in facts.of(GRADIENT_GROWTH)):
        return None
    if not found:
        return _blew_up_from_the_start(facts)
    f = found[0]
    broke = Found(
        f"the first updates broke the run: from step {f.step} the loss sat at "
        f"{f.evidence.get('ratio', math.nan):.3g}x where it started",
        0,
        [],
        dict(f.evidence),
    )
    ended = _ended_below(facts, f.evidence.get("best_level"))
    stuck = _stuck_with_dead_units(facts, f.evidence.get("best_level"))
    if stuck is not None:
        # back where it started and held there, finite, its units dead: the jolt is over and
        # what stops the run from learning is the units it killed, named by their own rule
        broke.consequence_of = (
            f"the run came back to where it started (to {stuck:.4g} over its last "
            f"{ENDED_OVER} steps) and stayed there with units dead: the first updates killed "
            "them, and the dead units, not the step size, keep it from learning"
        )
    elif (born := _exploded_from_the_start(facts)) is not None:
        # the gradient before any update was already exploded: the first updates were thrown
        # by it, whatever the step size
        broke.consequence_of = (
            f"{born.summary}: the first updates applied that gradient, before any step size "
            "could be judged"
        )
    elif ended is None:
        broke.summary += " and never came back (the step size is far above the stability limit)"
    else:
        # back below where it started, at the same rates: they were within the limit of the
        # model as it then was; what threw the first updates is named by its own rule
        broke.consequence_of = (
            f"the run came back on its own below where it started (to {ended:.4g} over its last "
            f"{ENDED_OVER} steps): the first updates' jolt passed, not a step size the run "
            "cannot train at"
        )
    return broke


# A rate under this share of its highest over the window before a climb had passed its peak.
PAST_PEAK = 0.9


def _lr_rising_into_break(facts: RunFacts, window: int = 100, rise: float = 1.5) -> Found | None:
    """The loss climbed or blew up (not a NaN out of the blue) after the learning rate rose
    ``rise`` times or more over the ``window`` steps before, or rose at every step of them
    and ``rise`` times or more since it began to, and stood within ``PAST_PEAK`` of its highest
    there: a warm-up still climbing (one that never stopped), or a rate raised by hand on a
    resume. A step size raised far enough crosses
    2/sharpness; the cause is dated to where that rise began."""
    broke = [
        f
        for f in facts.of(LOSS_DIVERGENCE, GRADIENT_GROWTH)
        if _breaks(f) or f.kind == LOSS_DIVERGENCE
    ]
    rates = facts.learning_rates
    if not broke or not rates:
        return None
    first = min(broke, key=lambda f: (f.step, not _breaks(f)))
    if any(f.step < first.step for f in facts.of(NONFINITE)):
        return None
    # a climb found before the run broke is named as what it was; one found early in a rise
    # that went on into the break is judged by the whole rise (a one-cycle peak typed 10x
    # climbs at 1.5x its first rate and breaks at 3x)
    into = [first] + [f for f in broke if _breaks(f) and f.step > first.step][:1]
    for found in (_rate_rose_into(facts, f, window, rise) for f in into):
        if found is not None:
            return found
    return None


def _rate_rose_into(facts: RunFacts, broke: Finding, window: int, rise: float) -> Found | None:
    """:func:`_lr_rising_into_break`'s test of the rates before ``broke`` (the first climb or
    break, or the break that climb led into)."""
    when = broke.step
    what = "the run broke" if _breaks(broke) else "the loss began to climb away"
    for steps, values in facts.learning_rates:
        # positive readings: a warm-up's first rate of 0 (LambdaLR at step 0) is no base
        before = values[(steps <= when) & (steps >= when - window) & _positive(values)]
        if len(before) < 2 or not before[-1] > before[0]:
            continue
        if before[-1] < PAST_PEAK * before.max():
            continue  # past its peak and falling (a one-cycle schedule): not still rising
        # the cause is there from where the rise into the break began: the last step at the
        # window's lowest rate, and back from there while the rate was still rising
        upto = np.flatnonzero((steps <= when) & (steps >= when - window))
        start = upto[np.flatnonzero(values[upto] == np.nanmin(values[upto]))[-1]]
        while start > 0 and values[start - 1] < values[start]:
            start -= 1
        # a warm-up that never stopped rises less and less over a window, yet every step is
        # one the run had never taken: it rose through the whole window, far from its start
        ramped = bool(np.all(np.diff(before) >= 0)) and before[-1] >= rise * values[start]
        if before[-1] < rise * before[0] and not ramped:
            continue
        if _a_passing_raise(facts, int(steps[start]), when):
            continue
        found = Found(
            f"the learning rate was still rising when {what} at step {when} "
            f"({before[0]:.3g} -> {before[-1]:.3g} over the {window} steps before): the step "
            f"size outgrew the curvature (rising since step {int(steps[start])})",
            int(steps[start]),
            [],
            {"lr_before": float(before[0]), "lr_at_break": float(before[-1]), "broke_at": when},
        )
        # weights replaced between steps, with no raise at a stroke (which moves them as far)
        replaced = _replaced_just_before(facts, when)
        if replaced is not None and _raised_before(facts, when, within=window) is None:
            found.consequence_of = (
                f"the weights were replaced between steps at step {replaced} (a resume from "
                "the wrong snapshot, an EMA swap), and the loss climbed from there: no step "
                "size made it"
            )
        elif (born := _exploded_from_the_start(facts)) is not None:
            # a model whose layers amplify the signal is as sharp as they amplify: a rate that
            # trains a standard initialisation meets that curvature on its way up
            found.consequence_of = (
                f"the gradients exploded from the first step ({layer_span(born.where)} "
                "amplified the signal and the gradient at step "
                f"{born.first_step}): the rising rate met the curvature that made"
            )
        return found
    return None


def _lr_raised_into_a_jolt(facts: RunFacts, jump: float = 4.0, within: int = 10) -> Found | None:
    """Some group's learning rate raised ``jump`` times or more from one reading to the next
    (a resume with the wrong rate, a rate set by hand: no warm-up ramps that fast), and within
    ``within`` steps the run was jolted (a loss or gradient-norm spike, a climb, a NaN): a step
    raised that far crosses 2/sharpness at once."""
    jolts = sorted(f.step for f in facts.of(*JOLTS) if f.severity != "info")
    for steps, values, i in _raised_at_a_stroke(facts, jump) if jolts else ():
        at = int(steps[i])
        hit = next((j for j in jolts if at <= j <= at + within), None)
        if hit is not None and not _a_passing_raise(facts, at, hit):
            before, after = float(values[i - 1]), float(values[i])
            return Found(
                f"the learning rate was raised {after / before:.3g}x at step {at} "
                f"({before:.3g} -> {after:.3g}) and the run was jolted at step {hit}: a step "
                "raised that far crosses 2/sharpness at once",
                at,
                [],
                {"lr_before": before, "lr_after": after, "jolted_at": hit},
            )
    return None


def _unstable_steps(facts: RunFacts) -> Found | None:
    """No probe ran, but the steps overshot along their own direction (the directional
    sharpness ratio, from two successive gradients, above the limit)."""
    found = facts.of(UNSTABLE_STEPS)
    broke = facts.broke_at
    if broke is not None:
        # steps that overshot for a while, after which the run learnt on to its best loss
        # before it broke: that episode was over, and no part of the break
        found = [f for f in found if f.step > broke or not _learnt_on_from(facts, f.step, broke)]
    if not found:
        return None
    first = found[0]
    ratio = first.evidence.get("median_recent", math.nan)
    overshot = Found(
        f"the optimizer's steps overshoot from step {first.step}: the curvature along each "
        f"update is {ratio:.2g}x its stability limit (the learning rate is above 2/sharpness)",
        first.step,
        [],
        dict(first.evidence),
    )
    spikes = [
        f.step
        for f in facts.of(LOSS_SPIKE)
        if f.severity != "info" and first.step - EXPLOSION_LEAD <= f.step <= first.step
    ]
    multiplied = _multiplied_every_step(facts)
    if multiplied is not None and _trained_at_that_rate(facts, first.step) >= RATE_PROVEN:
        # the step size served the run long before: what grew past it was the curvature, with
        # weights multiplied by one factor every step
        overshot.consequence_of = (
            f"{_multiplied_said(multiplied)}: the curvature grew with the weights, past a step "
            "size that had served the run"
        )
    elif spikes and facts.broke_at is None and found[-1].step <= first.step + EXPLOSION_LEAD:
        # One burst of overshooting right after a loss spike, never again, in a run that did
        # not break: the spike's own update (a batch far off) threw the weights, and the steps
        # that brought them back read the wreck; a step size above 2/curvature overshoots on.
        overshot.consequence_of = (
            f"the loss spike at step {spikes[0]}: its update threw the weights, and the steps "
            "that followed overshot on the way back, once"
        )
    return overshot


def _measured_sharpness(facts: RunFacts) -> Found | None:
    found = facts.of(SHARPNESS_ABOVE_LIMIT)
    if found:
        first = found[0]
        ratio = first.evidence.get("ratio")
        text = f"sharpness above its stability limit from step {first.step}"
        if ratio is not None:
            text += f" ({ratio:.2f}x the limit)"
        return Found(text, first.step, [f.where for f in found if f.where], dict(first.evidence))
    return _sharpness_at_limit_before_divergence(facts)


def _sharpness_at_limit_before_divergence(
    facts: RunFacts, near: float = 0.85, probes: int = 3
) -> Found | None:
    """One of the last ``probes`` sharpness probes before a divergence already stood at (or
    above) the limit: the step size had caught up with the curvature (a rising LR, a sharpening
    model) and the run then left the stable region."""
    broke = facts.of(NONFINITE, LOSS_SPIKE)
    sharp, limit = facts.series(SHARPNESS.name), facts.series(SHARPNESS_LIMIT.name)
    if not broke or sharp is None or limit is None:
        return None
    when = broke[0].step
    # each probe's limit at its own step (there is none at a learning rate of 0 or below)
    limits = dict(zip(limit[0].tolist(), limit[1].tolist(), strict=True))
    bounds = np.array([limits.get(int(step), np.nan) for step in sharp[0]])
    recent = np.flatnonzero((sharp[0] < when) & (bounds > 0))[-probes:]
    if not len(recent):
        return None
    ratios = sharp[1][recent] / bounds[recent]
    if not np.nanmax(ratios) >= near:
        return None
    i = recent[int(np.nanargmax(ratios))]
    ratio = float(np.nanmax(ratios))
    return Found(
        f"sharpness reached {ratio:.2g}x its stability limit at step {int(sharp[0][i])}, "
        f"before the run broke at step {when}: the step size had caught up with the curvature",
        int(sharp[0][i]),
        [],
        {
            "sharpness": float(sharp[1][i]),
            "limit": float(bounds[i]),
            "ratio": ratio,
            "diverged_at": when,
        },
    )


def _loss_divergence(facts: RunFacts) -> Found | None:
    found = facts.of(LOSS_DIVERGENCE)
    if not found:
        return _climbed_as_the_weights_were_multiplied(facts)
    worst = max(found, key=lambda f: Severity.rank(f.severity))
    # an episode the loss came back from and then bettered is over: the climb that counts is
    # the one from the best level the worst finding climbed from
    since = worst.evidence.get("best_level_step")
    later = [f for f in found if isinstance(since, int) and f.step > since]
    first = later[0] if later and found[0].step < since else found[0]
    ev = dict(first.evidence)
    summary = (
        f"the loss climbed away from its best sustained level {ev.get('best_level', math.nan):.4g}"
        f" (step {ev.get('best_level_step')}) from step {first.step}"
    )
    if worst.severity == "critical":
        summary += f", to {worst.evidence.get('ratio', math.nan):.3g}x it by step {worst.step}"
    found = Found(summary, first.step, [], ev, worst.severity)
    replaced = _replaced_just_before(facts, first.step)
    if (burst := _burst_before(facts, first.step)) is not None:
        found.consequence_of = (
            f"{_burst_said(burst)}: the loss climbed from where those steps threw the weights"
        )
    elif replaced is not None:  # the climb is the jump the swapped weights made
        found.consequence_of = (
            f"the weights were replaced between steps at step {replaced} (an EMA swap, a "
            "checkpoint reload), and the loss climbed from there"
        )
    elif (restarted := _jolted_by_a_restart(facts, first.step)) is not None:
        found.consequence_of = (
            f"the optimizer's state started again from nothing at step {restarted}: its first "
            "steps threw the weights, and the loss climbed from there"
        )
    elif passed := _passed_just_before(facts, first.step):
        found.consequence_of = f"{passed}: the climb was that raise's jolt"
    elif (thrown := _thrown_just_before(facts, first.step)) is not None:
        step, moved = thrown
        found.consequence_of = (
            f"the update before step {step} moved the weights {moved:.3g}x their usual step on "
            "an ordinary gradient (a learning-rate glitch, optimizer state lost): the loss "
            "climbed from where the optimizer threw them"
        )
    elif (multiplied := _multiplied_every_step(facts)) is not None:
        # weights grown by one factor a step, the gradient aside: the climb is theirs, however
        # it looks (a step up, a climb it comes back from as the model refits)
        found.summary += f"; {_multiplied_said(multiplied)}"
        found.evidence["weights_multiplied"] = multiplied
    elif (shift := _stepped_up_by_the_data(facts, first.step)) is not None and (
        worst.severity != "critical" or shift[3] <= FELL_FROM_STAGE
    ):
        step, jump, ended, _ = shift
        found.severity = "info"
        found.summary += (
            f"; the loss stepped up {jump:.3g}x at once at step {step}, after an ordinary "
            f"update, and has not climbed since (it ended at {ended:.4g}): what the model is "
            "asked to fit changed there (a curriculum's next stage, a new data source), not a "
            "divergence"
        )
    elif (ended := _ended_below(facts, ev.get("best_level"))) is not None:
        # a climb the run came all the way back from on its own: a transient (a catapult, a
        # critic's targets growing with its values), not a run that diverged
        found.severity = "info"
        found.summary += (
            f"; the run came back below that level on its own, to {ended:.4g} over its last "
            f"{ENDED_OVER} steps: a transient, not a divergence"
        )
    elif (runaway := facts.runaway_weights) is not None and runaway[1] < first.step:
        said, found.evidence["runaway_weights"] = _ran_away(runaway, "the climb")
        found.summary += f"; before it, {said}"
    elif (pushed := _pushed_outward(facts)) is not None:
        found.summary += f"; {_pushed_said(pushed)}"
        found.evidence["pushed_stride"] = pushed
    return found


# The weights' norm grown this many times over a run at one exponential rate (the logarithm of the
# norm a straight line in the step to within STEADY_FIT of its variance, the rate over the run's
# second half within STEADY_RATE of the first half's): multiplied by a constant every step.
STEADY_FIT, STEADY_RATE = 1e-3, 0.1
# A loss that ended this many times its best sustained level, its weights multiplied by one
# factor a step, is off its floor and climbing on (of the kept runs, 119 whose weights were so
# multiplied were decays of the wrong sign, 4 other faults, no healthy run: the multiplication
# is the fault; the loss only has to have left its best).
STEADY_CLIMB = 1.25


def _multiplied_every_step(facts: RunFacts) -> dict[str, float] | None:
    """How the norm of all the weights grew (``growth`` over the run, ``per_step``), when it grew
    ``RUNAWAY_GROWTH`` times or more at one steady exponential rate from the first record to the
    last: a weight decay or an L2 penalty of the wrong sign multiplies every weight by the same
    factor each step, whatever the gradient does. Learning grows weights fast, then slower;
    nothing it does keeps one rate for a whole run."""
    norms = facts.series(PARAM_NORM.name)
    if norms is None:
        return None
    steps, values = norms
    ok = np.isfinite(values) & (values > 0)
    steps, logs = steps[ok].astype(float), np.log(values[ok])
    if len(logs) < 60 or logs[-1] - logs[0] < math.log(RUNAWAY_GROWTH):
        return None
    slope, intercept = np.polyfit(steps, logs, 1)
    residual = logs - (slope * steps + intercept)
    if not slope > 0 or residual.var() > STEADY_FIT * logs.var():
        return None
    half = len(logs) // 2
    early = (logs[half] - logs[0]) / (steps[half] - steps[0])
    late = (logs[-1] - logs[half]) / (steps[-1] - steps[half])
    if not abs(late - early) <= STEADY_RATE * early:
        return None
    return {"growth": float(math.exp(logs[-1] - logs[0])), "per_step": float(math.expm1(slope))}


# The share of an Adam-type step's full stride (every weight moving its learning rate, the same
# way, every step: the norm of all of them growing by ``lr * sqrt(count)`` a step) at or above
# which the weights' norm grew over a run's second half: updates pushing the weights outward
# step after step. Across the kept runs under Adam-type optimizers, those whose gradients
# exploded grew at 0.011 of it or less (an explosion's updates go every way; Adam bounds them);
# decays and penalties of the wrong sign, targets drifting away and logits pushed up at
# 0.2 to 2 and more.
PUSHED_STRIDE = 0.1


def _pushed_outward(facts: RunFacts) -> float | None:
    """The share of an Adam-type step's full stride (``PUSHED_STRIDE``) at which the norm of
    all the weights grew over the second half of its record (a straight line fitted to it),
    when that share is ``PUSHED_STRIDE`` or more, under an optimizer whose step does not grow
    with the gradient (nor by a factor of its own, as Rprop's): the updates pushed every weight
    one way, step after step."""
    count = facts.run.config.get(PARAMETER_COUNT)
    norms = facts.series(PARAM_NORM.name)
    family = facts.run.config.get(OPTIMIZER_FAMILY)
    if family not in BOUNDED_FAMILIES or facts.optimizer in SELF_SIZED or not count or not norms:
        return None
    steps, values = norms
    ok = np.isfinite(values) & (values > 0)
    steps, values = steps[ok].astype(float), values[ok]
    if len(values) < 60:
        return None
    half = len(values) // 2
    late = [lr[(at >= steps[half]) & np.isfinite(lr)] for at, lr in facts.learning_rates]
    lr = max((float(np.median(rates)) for rates in late if len(rates)), default=0.0)
    if not lr > 0:
        return None
    slope = np.polyfit(steps[half:], values[half:], 1)[0]
    share = float(slope / (lr * math.sqrt(count)))
    return share if share >= PUSHED_STRIDE else None


def _pushed_said(share: float) -> str:
    return (
        f"the norm of all the weights grew over the run's second half at {share:.2g} of the "
        "optimizer's full stride (every weight moving its learning rate outward every step): "
        "the updates pushed the weights one way step after step (what asks for ever larger "
        "weights: a decay or penalty of the wrong sign, a target drifting away, logits pushed "
        "up)"
    )


def _multiplied_said(multiplied: dict[str, float]) -> str:
    return (
        f"the norm of all the weights grew {multiplied['growth']:.3g}x over the run at one "
        f"steady rate ({multiplied['per_step']:.2%} a step from the first step to the last): "
        "something multiplies them every step, whatever the gradient (a weight decay or L2 "
        "penalty of the wrong sign)"
    )


def _climbed_as_the_weights_were_multiplied(facts: RunFacts) -> Found | None:
    """No climb found, but the loss ended ``STEADY_CLIMB`` times its best sustained level (its
    lowest running median of ``ENDED_OVER``) or more, every loss finite, while the weights were
    multiplied every step (:func:`_multiplied_every_step`): a slow climb the loss-spike and
    divergence detectors, following their baselines up, did not call, with its cause in the
    weights."""
    multiplied, loss = _multiplied_every_step(facts), facts.series(LOSS.name)
    if multiplied is None or loss is None or not np.isfinite(loss[1]).all():
        return None
    steps, values = loss
    if len(values) < 3 * ENDED_OVER:
        return None
    medians = _running_medians(values, ENDED_OVER)
    best = int(np.argmin(medians))
    ended = float(medians[-1])
    if not medians[best] > 0 or ended < STEADY_CLIMB * medians[best]:
        return None
    began = int(steps[best + ENDED_OVER - 1])
    return Found(
        f"the loss climbed from its best sustained level {medians[best]:.4g} (step {began}) to "
        f"{ended:.4g} over its last {ENDED_OVER} steps; {_multiplied_said(multiplied)}",
        began,
        [],
        {"best_level": float(medians[best]), "ended": ended, "weights_multiplied": multiplied},
        "warning",
    )


def _ran_away(runaway: tuple[str, int, float, float], before: str) -> tuple[str, dict]:
    """What a weight that ran away (see :func:`_runaway_weights`) before ``before`` did, in
    words, and as evidence."""
    name, began, factor, _ = runaway
    said = (
        f"the weights of {name.rpartition('.')[0] or name} grew geometrically from step "
        f"{began} ({factor:.3g}x over the last {RUNAWAY_SPAN} steps before {before}) while the "
        "loss set no new best: something multiplies them (a decay or penalty of the wrong sign)"
    )
    return said, {"parameter": name, "began": began, "factor": factor}


# Steps before a climb was found within which the loss may have stepped up to its new level, and
# how many times the median of the 20 losses before it the step must be.
STEP_UP_WITHIN, STEPPED_UP = 15, 3.0
# A step that large (a critical climb), or a gradient that stepped up with it, is the data's
# only when the loss then fell to this share of the new level's first ten losses: learnt.
FELL_FROM_STAGE = 0.5


def _stepped_up_by_the_data(facts: RunFacts, step: int) -> tuple[int, float, float, float] | None:
    """The loss stood ``STEPPED_UP`` times the median of the 20 losses before it at one step
    (``STEP_UP_WITHIN`` or fewer before ``step``), the loss just before that still at that
    median's level (under 1.5x it): a step up made by the batches, not by the updates, since the
    update before it was ordinary (no gradient spike, no step that threw the weights, no raised
    rate, no restart, no gradient ``ORDINARY`` times its usual size); and the loss did not climb
    on from there (the median of its last ``ENDED_OVER`` finite losses, before any NaN, at most
    that of its first ten at the new level). (the step, how far, where the loss ended, that
    over the new level's first ten); None otherwise. An
    update that wrecks the weights leaves its mark before the loss it makes, a harder stage of
    the data none."""
    loss = facts.series(LOSS.name)
    if loss is None:
        return None
    # read up to the first non-finite loss: a stage of the data is judged by what came before
    finite = np.isfinite(loss[1])
    end = len(finite) if finite.all() else int(np.argmin(finite))
    steps, values = loss[0][:end], loss[1][:end]
    spiked = {f.step for f in facts.of(GRAD_NORM_SPIKE, GRADIENT_SPIKE) if f.severity != "info"}
    for i in np.flatnonzero((steps >= step - STEP_UP_WITHIN) & (steps <= step)):
        if i < 20 or len(values) - i < 2 * ENDED_OVER:
            continue
        level = float(np.median(values[i - 20 : i]))
        at = int(steps[i])
        if not (level > 0 and values[i] >= STEPPED_UP * level and values[i - 1] < 1.5 * level):
            continue
        if spiked & set(range(at - 3, at)) or _overstepped_before(facts, at) is not None:
            return None
        if _gradient_stood_out(facts, at):
            return None
        if _raised_before(facts, at) is not None or _restarted_before(facts, at) is not None:
            return None
        ended, stage = float(np.median(values[-ENDED_OVER:])), float(np.median(values[i : i + 10]))
        if ended > stage:
            return None
        return at, float(values[i] / level), ended, ended / stage
    return None


def _gradient_stood_out(facts: RunFacts, step: int, before: int = 20) -> bool:
    """Whether the gradient norm of one of the 3 records before ``step`` stood ``ORDINARY``
    times the median of the ``before`` records before them or more (a spike too small for the
    spike test on a noisy norm, whose update still threw the weights)."""
    grads = facts.series(GRAD_NORM.name)
    if grads is None:
        return False
    steps, values = grads
    usual = values[(steps < step - 3) & (steps >= step - 3 - before) & np.isfinite(values)]
    near = values[(steps >= step - 3) & (steps < step)]
    return len(usual) >= before // 2 and bool(np.any(near >= ORDINARY * np.median(usual)))


def _thrown_just_before(facts: RunFacts, step: int) -> tuple[int, float] | None:
    """The loss spike ``CONFIRMED_SOON`` steps or fewer before ``step`` (or at it) that met
    weights the optimizer had thrown (see :func:`_overstepped_before`), and how far, if any."""
    for spike in facts.of(LOSS_SPIKE):
        if step - CONFIRMED_SOON <= spike.step <= step:
            moved = _overstepped_before(facts, spike.step)
            if moved is not None:
                return spike.step, moved
    return None


ENDED_OVER = 10  # the last losses of a run that say where it ended


def _ended_at(facts: RunFacts) -> float | None:
    """The median of the run's last ``ENDED_OVER`` losses, when every loss of the run was finite
    and there were ``3 * ENDED_OVER`` or more; None otherwise."""
    loss = facts.series(LOSS.name)
    if loss is None or len(loss[1]) < 3 * ENDED_OVER or not np.isfinite(loss[1]).all():
        return None
    return float(np.median(loss[1][-ENDED_OVER:]))


def _stuck_at_the_start(facts: RunFacts) -> float | None:
    """Where the run ended, when back at its first loss with units dead (see
    :func:`_stuck_with_dead_units`)."""
    loss = facts.series(LOSS.name)
    if loss is None or not len(loss[1]):
        return None
    return _stuck_with_dead_units(facts, float(loss[1][0]))


def _stuck_with_dead_units(facts: RunFacts, level: object) -> float | None:
    """Where the run ended (:func:`_ended_at`) when that stood within half of ``level``'s size of
    it (back where the run started, not below) and units were found dead in a layer; None
    otherwise. A step size the run cannot train at keeps throwing it; a run whose first updates
    killed its units sits still at the level it started from, unable to learn."""
    dead = [f for f in facts.of(LOSS_OF_PLASTICITY) if f.severity != "info" and f.where]
    if not dead or not isinstance(level, int | float) or not level > 0:
        return None
    ended = _ended_at(facts)
    if ended is None or not level <= ended:
        return None
    return ended if _within_half(np.array([ended]), level)[0] else None


def _ended_below(facts: RunFacts, level: object) -> float | None:
    """Where the run ended (:func:`_ended_at`) when under ``level``, with nothing the autopilot
    did on the way; None otherwise."""
    if not isinstance(level, int | float) or _autopilot_actions(facts):
        return None
    ended = _ended_at(facts)
    return ended if ended is not None and ended < level else None


def _replaced_just_before(facts: RunFacts, step: int) -> int | None:
    """The step of a loss spike, or of a climb's start (see :func:`_put_back_into_a_climb`),
    within ``CONFIRMED_SOON`` steps before ``step`` at which the weights were put back between
    steps, if any: what the detectors read over the next records (a loss above its best, the
    larger gradients of weights that fit worse) is that replacement's doing."""
    grads = {f.step for f in facts.of(GRAD_NORM_SPIKE, GRADIENT_SPIKE)}
    for spike in facts.of(LOSS_SPIKE):
        if spike.step <= step <= spike.step + CONFIRMED_SOON and _put_back(
            facts, spike.step, grads
        ):
            return spike.step
    climb = _put_back_into_a_climb(facts)
    if climb is not None and climb.first_step <= step <= climb.first_step + CONFIRMED_SOON:
        return climb.first_step
    return None


def _put_back(facts: RunFacts, step: int, grads: set[int]) -> bool:
    """Whether the weights were put back between steps at ``step``: no gradient spike moved
    them there, and their norm moved ``REPLACED`` times its usual step without growing (an
    earlier or averaged state). Weights made larger between steps are no such state (a
    constraint scaling them the wrong way multiplies every gradient through them)."""
    if not _replaced_at(facts, step, grads):  # False without the norms
        return False
    steps, values = facts.series(PARAM_NORM.name)
    before, after = values[steps == step - 2], values[steps == step]
    return bool(len(before) and len(after) and after[0] <= before[0])


def _put_back_into_a_climb(facts: RunFacts) -> Found | None:
    """The loss left its best level for good (a divergence found) from a step at which the
    weights were put back between steps (a resume from the wrong snapshot, an EMA swap never
    undone): on a loss too noisy for the jump to stand out as a spike, the replacement is what
    the climb began with."""
    grads = {f.step for f in facts.of(GRAD_NORM_SPIKE, GRADIENT_SPIKE)}
    for climb in facts.of(LOSS_DIVERGENCE):
        best = climb.evidence.get("best_level_step")
        if climb.severity == "info" or not isinstance(best, int):
            continue
        for step in range(max(best + 1, climb.step - CONFIRMED_SOON), climb.step + 1):
            if _put_back(facts, step, grads):
                return Found(
                    f"the loss climbed from step {step}, when the weights were replaced between "
                    "steps (a resume from the wrong snapshot, an EMA swap never undone): their "
                    f"norm moved {REPLACED:g}x or more its usual step, and no gradient moved it",
                    step,
                    _replaced_modules(facts, step),
                    {"weights_replaced_at": [step], "climb": climb.evidence},
                )
    return None


def _autopilot_actions(facts: RunFacts) -> list:
    """The actions the autopilot (or the user) took; the Monitor's own records (following a
    new optimizer, an objective the user said changed) are none."""
    return [a for a in facts.run.actions() if a.kind not in MONITOR_ACTIONS]


def _autopilot(facts: RunFacts) -> Found | None:
    actions = _autopilot_actions(facts)
    if not actions:
        return None
    counts: dict[str, int] = {}
    for a in actions:
        counts[a.kind] = counts.get(a.kind, 0) + 1
    done = ", ".join(f"{kind} x{n}" for kind, n in counts.items())
    loss = facts.series(LOSS.name)
    ended = ""
    if loss is not None and len(loss[1]):
        last = loss[1][-1]
        ended = (
            f"; the run ended with loss {last:.4g}"
            if np.isfinite(last)
            else ("; the run still ended non-finite")
        )
    rollbacks = [a for a in actions if a.kind == "rollback"]
    evidence: dict[str, Any] = {"actions": counts}
    if rollbacks:
        evidence["rollbacks"] = [
            {
                "step": a.step,
                "to_step": a.detail.get("to_step"),
                "lr_after": a.detail.get("lr_after"),
            }
            for a in rollbacks
        ]
    return Found(
        f"the autopilot acted: {done} (first at step {actions[0].step}){ended}",
        actions[0].step,
        [],
        evidence,
    )


# Fixes several rules offer. Free names: model, optimizer, loss, logits, targets, q, k,
# head_dim, total_steps, ids, run_dir (what the user's training loop has at hand).
LOWER_LR = Fix("lower the learning rate", "for group in optimizer.param_groups: group['lr'] *= 0.5")
WARMUP = Fix(
    "warm the learning rate up for longer (or lower its peak)",
    "scheduler = steadygrad.optim.WarmupCosine(optimizer, warmup_steps=total_steps // 10, "
    "total_steps=total_steps)",
)
AUTOPILOT = Fix(
    "never apply a non-finite update; roll back automatically with a lower learning rate",
    "mon = steadygrad.Monitor(model, optimizer, autopilot=steadygrad.Autopilot())",
)
CLIP_SPIKES = Fix(
    "clip spikes automatically",
    "mon = steadygrad.Monitor(model, optimizer, "
    "autopilot=steadygrad.Autopilot(spike_clipping=True))",
)

RULES: tuple[Rule, ...] = (
    Rule(
        "attention_logit_growth",
        MECHANISM,
        "warning",
        "Dehghani et al. 2023 (ViT-22B) and Wortsman et al. 2023, 'Small-scale proxies for "
        "large-scale Transformer training instabilities': attention logits that grow without "
        "bound collapse the attention entropy and diverge the run; QK-LayerNorm prevents it.",
        (
            Fix(
                "normalise queries and keys (QK-LayerNorm); build the optimizer again after",
                "steadygrad.nn.add_qk_norm(model)",
                applies=lambda facts: bool(facts.run.config.get("add_qk_norm_applies")),
            ),
            Fix(
                "normalise queries and keys (QK-LayerNorm) inside your attention, before q @ k",
                "q, k = steadygrad.nn.QKNorm(head_dim)(q, k)",
                applies=lambda facts: not facts.run.config.get("add_qk_norm_applies"),
            ),
            LOWER_LR,
        ),
        _attention_growth,
        (ATTENTION_LOGIT_GROWTH, *JOLTS),
        contained=True,
    ),
    Rule(
        "output_logit_divergence",
        MECHANISM,
        "warning",
        "Wortsman et al. 2023 (and Chowdhery et al. 2022, PaLM): the output logits drift to "
        "large negative log-partition values; the auxiliary z-loss 1e-4 * logsumexp^2 keeps "
        "the log-partition near zero.",
        (
            Fix(
                "remove the term that rewards larger logits, or flip its sign: a z-loss adds a "
                "positive multiple of logsumexp^2 (and nll_loss takes log-probabilities: "
                "F.nll_loss(F.log_softmax(logits, -1), y))",
                "loss = loss + steadygrad.nn.z_loss(logits, coef=1e-4)",
                applies=lambda facts: _logits_pushed_up(facts, math.inf) is not None,
            ),
            Fix(
                "give the loss its floor back: a margin goes through softplus (a hinge "
                "through clamp(min=0)), a likelihood through its normaliser",
                "loss = torch.nn.functional.softplus(-(2 * targets - 1) * logits).mean()",
                applies=lambda facts: _fell_without_bound(facts) is not None,
            ),
            Fix(
                "add the z-loss",
                "loss = loss + steadygrad.nn.z_loss(logits, coef=1e-4)",
                applies=lambda facts: (
                    _logits_pushed_up(facts, math.inf) is None
                    and _fell_without_bound(facts) is None
                ),
            ),
        ),
        _output_logits,
        # the rest: to tell the output layer's weights ran away (see _runaway_weights), and
        # whether its updates were too large for them
        (
            OUTPUT_LOGIT_DIVERGENCE,
            ATTENTION_LOGIT_GROWTH,
            LOSS_SPIKE,
            GRAD_NORM_SPIKE,
            GRADIENT_SPIKE,  # a spike's throw (see _thrown_by_a_spike)
            UPDATE_RATIO_OUT_OF_RANGE,
            SOFTMAX_COLLAPSE_KIND,  # logits held at their bound (see _pinned_by_a_collapse)
            LOSS_DIVERGENCE,  # a climb the run came back from (see _transient_around)
        ),
        # an outlier batch's own logits, or the jolt it gave; logits spread so far apart that
        # the softmax rounds to exactly 0 and 1 (a temperature) are that collapse's logits
        explained_by=("data_outlier", "softmax_collapse"),
        # its harm is in the head's logits and the loss: a NaN another module's forward makes
        # from finite inputs (a flat frame's 0/0 in a standardiser) is not a drift's
        contained=True,
    ),
    Rule(
        "softmax_collapse",
        MECHANISM,
        "warning",
        "Prieto et al. 2025, 'Grokking at the edge of numerical stability': float32 softmax "
        "rounds the correct class to exactly 1, its gradient to exactly 0, and learning stalls.",
        (
            Fix(
                "use StableMax cross-entropy",
                "steadygrad.nn.stablemax_cross_entropy(logits, targets)",
            ),
            Fix(
                "project out the naive-loss-minimisation direction (⊥Grad)",
                "optimizer = steadygrad.nn.OrthoGrad(optimizer)",
            ),
        ),
        _softmax_collapse,
        # a spike's throw, a transient's, units dead before it
        (
            SOFTMAX_COLLAPSE_KIND,
            GRAD_NORM_SPIKE,
            GRADIENT_SPIKE,
            LOSS_DIVERGENCE,
            LOSS_OF_PLASTICITY,
        ),
        explained_by=("data_outlier",),  # an outlier batch's own logits, or the jolt it gave
        # its harm is at the loss (a zero gradient) and in the head's logits: a NaN another
        # module's forward makes from finite inputs is not a collapse's
        contained=True,
    ),
    Rule(
        "sharpness_above_limit",
        MECHANISM,
        "warning",
        "Cohen et al. 2021, 'Gradient descent typically occurs at the edge of stability' "
        "(sharpness above 2/lr is unstable for GD), and Cohen et al. 2022 for Adam's "
        "preconditioned sharpness limit (2+2*beta1)/((1-beta1)*lr).",
        (
            Fix(
                "lower the learning rate until sharpness sits below its limit (2/lr for GD, "
                "(2+2*momentum)/lr with heavy-ball momentum)",
                LOWER_LR.code,
            ),
            WARMUP,
        ),
        _sharpness,
        (
            SHARPNESS_ABOVE_LIMIT,
            UNSTABLE_STEPS,
            NONFINITE,
            LOSS_SPIKE,
            GRAD_NORM_SPIKE,
            GRADIENT_SPIKE,  # a batch's own spike, whose update threw the run (_data_outlier)
            LOSS_DIVERGENCE,
            GRADIENT_GROWTH,
            LOSS_OF_PLASTICITY,  # units the first updates killed (_stuck_with_dead_units)
            *DRIVEN,  # what a group set far above the rest drives (_fast_group)
        ),
    ),
    Rule(
        "exploding_gradients",
        MECHANISM,
        "warning",
        "Pascanu, Mikolov and Bengio 2013, 'On the difficulty of training recurrent neural "
        "networks': gradients that grow geometrically (through depth or time) explode; clipping "
        "the gradient norm bounds the step, and a smaller learning rate or a better-conditioned "
        "initialisation removes the growth.",
        (
            Fix(
                "clip the gradient norm",
                "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)",
            ),
            LOWER_LR,
        ),
        _exploding,
        (
            GRADIENT_GROWTH,
            OUTPUT_LOGIT_DIVERGENCE,
            ATTENTION_LOGIT_GROWTH,
            LOSS_SPIKE,
            LOSS_DIVERGENCE,
            GRAD_NORM_SPIKE,
            GRADIENT_SPIKE,
            NONFINITE,
        ),
        # Overshooting steps raise the next gradients: growth across steps then follows from
        # the step size, not from growth through depth or time at fixed weights. So does the
        # knock an outlier gave, or the spike that poisoned Adam's moments: gradients stay up.
        explained_by=("sharpness_above_limit", "data_outlier", "adam_second_moment_poisoned"),
    ),
    Rule(
        "loss_of_plasticity",
        MECHANISM,
        "warning",
        "Dohare et al. 2024 (Nature), 'Loss of plasticity in deep continual learning': dead "
        "units and collapsing feature rank stop a network from learning new data.",
        (
            Fix(
                "shrink and perturb the weights (Ash and Adams 2020) to revive dead units",
                "torch.nn.utils.vector_to_parameters(0.8 * torch.nn.utils.parameters_to_vector("
                "model.parameters()) + 0.01 * torch.randn_like(torch.nn.utils.parameters_to_vector("
                "model.parameters())), model.parameters())",
            ),
            LOWER_LR,
        ),
        _plasticity,
        (
            LOSS_OF_PLASTICITY,
            GRAD_NORM_SPIKE,
            GRADIENT_SPIKE,
            UPDATE_RATIO_OUT_OF_RANGE,
            LOSS_SPIKE,
            NONFINITE,  # none is theirs to make
            LOSS_DIVERGENCE,  # what jolted the run after a raise of the rate that passed
        ),
        # one batch's giant step can push a layer's pre-activations below zero for good
        explained_by=("data_outlier",),
        stalls=True,
    ),
    Rule(
        "update_ratio_out_of_range",
        MECHANISM,
        "warning",
        "Wortsman et al. 2023: instability follows updates that are large relative to the "
        "weights; a ratio near zero marks a frozen layer.",
        (
            Fix(
                "give those layers a learning rate of their own (lower for large updates; for a "
                "frozen layer check requires_grad and that its group's rate is not 0)",
                "optimizer.add_param_group({'params': [], 'lr': optimizer.param_groups[0]['lr']})",
            ),
            Fix(
                "check each group's learning rate against the one meant",
                "print([(g.get('name', i), g['lr']) for i, g in "
                "enumerate(optimizer.param_groups)])",
                applies=lambda facts: bool(facts.run.config.get(PARAM_GROUPS)),
            ),
        ),
        _update_ratio,
        (UPDATE_RATIO_OUT_OF_RANGE, LOSS_OF_PLASTICITY, GRADIENT_GROWTH, *DRIVEN),
        # a second moment inflated by one huge gradient damps the updates to ~0: frozen-looking;
        # a step size above the limit makes updates large relative to the weights
        explained_by=("adam_second_moment_poisoned", "sharpness_above_limit"),
        fault_alone=True,  # a rate of 0, a typo in a layer-wise schedule
    ),
    Rule(
        "adam_second_moment_poisoned",
        EVENT,
        "warning",
        "Huang et al. 2025, 'SPAM: spike-aware Adam with momentum reset': a gradient spike "
        "inflates Adam's moments and damps or misdirects updates for thousands of steps.",
        (
            Fix(
                "use spike-aware Adam",
                "optimizer = steadygrad.optim.SPAM(model.parameters(), "
                "lr=optimizer.param_groups[0]['lr'])",
            ),
            CLIP_SPIKES,
        ),
        _adam_poisoned,
        # a loss spike: a restart's jolt; a climb: where the spike's moments threw the weights
        (GRAD_NORM_SPIKE, GRADIENT_SPIKE, LOSS_SPIKE, LOSS_DIVERGENCE),
        explained_by=("data_outlier",),  # an outlier batch's gradient is the spike that poisons
    ),
    Rule(
        "data_outlier",
        EVENT,
        "warning",
        "Chowdhery et al. 2022 (PaLM): spikes come from particular batches meeting particular "
        "parameter states; skipping those batches avoids them. Huang et al. 2025 (SPAM) damp "
        "the spike's gradient so it does not poison Adam's moments.",
        (
            Fix("find the batch behind it, and drop or fix it", "mon.step(loss, batch_ids=ids)"),
            CLIP_SPIKES,
        ),
        _data_outlier,
        (LOSS_SPIKE, GRAD_NORM_SPIKE, GRADIENT_SPIKE, NONFINITE, LOSS_DIVERGENCE, GRADIENT_GROWTH),
    ),
    Rule(
        "gradient_spike",
        EVENT,
        "warning",
        "Chowdhery et al. 2022 (PaLM) restart before a spike and skip its batches; Huang et "
        "al. 2025 (SPAM) clip spikes against the gradient's running second moment.",
        (
            CLIP_SPIKES,
            Fix("look at the batches behind it", "mon.step(loss, batch_ids=ids)"),
        ),
        _gradient_spike,
        # a NaN: bursts' end, or an edge the spike neared; a loss spike or climb: whether the
        # loss felt the spike
        (
            GRAD_NORM_SPIKE,
            GRADIENT_SPIKE,
            GRADIENT_GROWTH,
            NONFINITE,
            NONFINITE_ORIGIN,
            LOSS_SPIKE,
            LOSS_DIVERGENCE,
        ),
        # an outlier batch makes a gradient spike of its own; a spike that poisoned the second
        # moment is named by what it did
        explained_by=("data_outlier", "adam_second_moment_poisoned"),
    ),
    Rule(
        "nonfinite",
        SYMPTOM,
        "critical",
        "IEEE 754 arithmetic: NaN and Inf propagate forward from the first operation that "
        "produced them; the producer is the first module with finite inputs and a non-finite "
        "output.",
        (
            AUTOPILOT,
            Fix(
                "lower the learning rate or clip the gradient norm",
                "torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)",
            ),
        ),
        _nonfinite,
        (NONFINITE, NONFINITE_ORIGIN),
        # a forward pass overflowing float16 makes the loss non-finite; the GradScaler skips
        # the step and the weights stay finite: the overflow is what to fix
        explained_by=("amp_overflow",),
    ),
    Rule(
        "loss_spike",
        SYMPTOM,
        "warning",
        "Chowdhery et al. 2022 (PaLM): loss spikes at scale are tied to particular batches "
        "meeting particular parameter states; rewinding and skipping those batches avoids them.",
        (
            AUTOPILOT,
            WARMUP,
        ),
        _loss_spike,
        (LOSS_SPIKE, GRAD_NORM_SPIKE, GRADIENT_SPIKE, LOSS_DIVERGENCE, NONFINITE),
    ),
    Rule(
        "loss_divergence",
        SYMPTOM,
        "warning",
        "Wortsman et al. 2023 and Chowdhery et al. 2022: a loss that leaves its best level and "
        "keeps climbing is a divergence in progress; rolling back with a lower learning rate "
        "recovers it.",
        (AUTOPILOT, LOWER_LR, WARMUP),
        _loss_divergence,
        (LOSS_DIVERGENCE, LOSS_SPIKE, GRAD_NORM_SPIKE, GRADIENT_SPIKE, NONFINITE),
    ),
    Rule(
        "amp_overflow",
        SYMPTOM,
        "info",
        "Micikevicius et al. 2018, 'Mixed precision training': dynamic loss scaling skips a "
        "step whose gradients overflow and lowers the scale; such a step is expected.",
        (
            Fix(
                "nothing needed; if it is frequent, train in bfloat16",
                "torch.autocast('cuda', dtype=torch.bfloat16)",
            ),
        ),
        _amp_overflow,
        (AMP_OVERFLOW, NONFINITE, NONFINITE_ORIGIN),
    ),
    Rule(
        "autopilot_actions",
        SYMPTOM,
        "info",
        "steadygrad's autopilot: skip non-finite updates, roll back to the last good snapshot "
        "with a lower learning rate (as Chowdhery et al. 2022 restarted before spikes), and "
        "clip after a gradient spike.",
        (Fix("see what it did, step by step", "steadygrad.load(run_dir).actions()"),),
        _autopilot,
        (),
    ),
)


# -- continual learning (kept self-contained: one check, one rule, appended) --------------------
def _stability_gap(facts: RunFacts) -> Found | None:
    gaps = facts.of(STABILITY_GAP_FOUND)
    if not gaps:
        return None
    worst = max(gaps, key=lambda f: f.evidence.get("size", 0.0))
    ev = worst.evidence
    tasks = sorted({f.where for f in gaps if f.where})
    summary = (
        f"stability gap: after the task switch at step {ev.get('switch_step')}, accuracy on "
        f"earlier task {worst.where} fell by {ev.get('size', math.nan):.2f} within "
        f"{ev.get('steps_to_minimum')} steps and won half of it back only after "
        f"{ev.get('length')} steps ({len(gaps)} gap(s) in all)"
    )
    evidence = {"gaps": len(gaps), "worst": dict(ev)}
    return Found(summary, min(f.step for f in gaps), tasks, evidence)


STABILITY_GAP_RULE = Rule(
    "stability_gap",
    EVENT,
    "warning",
    "De Lange, van de Ven & Tuytelaars 2023 (ICLR), 'Continual evaluation for lifelong "
    "learning: identifying the stability gap': evaluated every iteration, earlier tasks lose "
    "much of their accuracy in the first steps on a new task and then partly recover, even with "
    "experience replay (Chaudhry et al. 2019); they trace it to the new task's large gradients "
    "outweighing the replayed ones at the switch. More replay makes the drop shallower "
    "(steadygrad study stability-gap).",
    (
        Fix(
            "replay (more of) a buffer of earlier tasks' examples in every batch",
            "buffer = steadygrad.continual.ReplayBuffer(capacity=2000)  # once; then each step: "
            "buffer.add(x, y); x, y = buffer.mix(x, y, k=32)",
        ),
        Fix(
            "start each new task gently: a lower learning rate, warmed up again at each switch",
            "scheduler = steadygrad.optim.WarmupCosine(optimizer, warmup_steps=100, "
            "total_steps=total_steps)  # a new one at each task switch, over that task's steps",
        ),
    ),
    _stability_gap,
    (STABILITY_GAP_FOUND,),
)
RULES = (*RULES, STABILITY_GAP_RULE)


# -- memorising, from the opt-in gradient-coherence probe (self-contained: one check, one rule) --
def _memorising(facts: RunFacts) -> Found | None:
    found = facts.of(MEMORISING)
    if not found:
        return None
    first = min(found, key=lambda f: f.step)
    ev = first.evidence
    summary = (
        f"memorising: from step {ev.get('probe_steps', [first.step])[0]} the training loss fell "
        f"({ev.get('loss_then', math.nan):.3g} -> {ev.get('loss_now', math.nan):.3g}, from "
        f"{ev.get('loss_start', math.nan):.3g} at the start) while the per-example gradients "
        f"stayed near orthogonal (m-coherence {ev.get('coherence')}, below {ev.get('low')}): "
        "the network is fitting examples one by one rather than a pattern they share"
    )
    return Found(summary, first.step, [], {"episodes": len(found), "first": dict(ev)})


MEMORISING_RULE = Rule(
    "memorising",
    EVENT,
    "warning",
    "Chatterjee 2020 (ICLR), 'Coherent gradients'; Chatterjee & Zielinski 2022, 'On the "
    "generalization mystery in deep learning': per-example gradients of learnable data agree "
    "and reinforce each other, those of randomly labelled data are near orthogonal, and each "
    "example is then fitted on its own; coherence falls as a network starts to memorise "
    "(steadygrad study gradient-coherence: real vs random labels on digits).",
    (
        Fix(
            "check the labels and the input pipeline (shuffled or misaligned labels look like "
            "this); compare with a run on a small subset whose labels you have checked",
            "steadygrad.load(run_dir).series('gradient_coherence')",
        ),
        Fix(
            "regularise or stop early: memorised examples do not carry over to held-out data",
            "for group in optimizer.param_groups: group['weight_decay'] = 5e-4",
        ),
    ),
    _memorising,
    (MEMORISING,),
)
RULES = (*RULES, MEMORISING_RULE)
