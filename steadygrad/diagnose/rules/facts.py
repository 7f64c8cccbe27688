""":class:`RunFacts`: what the rules read of a run, each read once, with the reads its own facts are
made of (where the run broke, weights replaced or run away, raises and bursts of the rate).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import cached_property

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from steadygrad.core import Finding, FindingKind
from steadygrad.core.metrics import (
    ACTIVATION_MODULES,
    GRAD_NORM,
    GRAD_NORM_PRECLIP,
    INPUT_LAYER,
    LEARNING_RATE,
    LOSS,
    MONITOR_ACTIONS,
    OPTIMIZER_FAMILY,
    OUTPUT_LAYER,
    OUTPUT_SHIFT_GRADIENT,
    PARAM_NORM,
    PARAMETER_COUNT,
    RECURRENT_MODULES,
    SOFTMAX_COLLAPSE,
    UPDATE_RATIO,
)
from steadygrad.core.optimizer import (
    AVERAGES_ITERATES,
    FIRST_MOMENT_DECAY,
    PER_COORDINATE,
    SECOND_MOMENT_DECAY,
)
from steadygrad.diagnose.detectors.stages import REPLACED
from steadygrad.diagnose.detectors.training import GRAD_NORM_SPIKE, LOSS_SPIKE, NONFINITE
from steadygrad.diagnose.detectors.transformer import (
    ATTENTION_LOGIT_GROWTH,
    GRADIENT_SPIKE,
    OUTPUT_LOGIT_DIVERGENCE,
    SHIFT_DOMINANT,
    SHIFT_REWARDED,
    SHIFT_TRUSTED_LOSS,
)
from steadygrad.diagnose.detectors.trends import LOSS_DIVERGENCE
from steadygrad.diagnose.rules.base import (
    Found,
    _breaks,
    _inside,
    _lowest_median,
    _positive,
    _running_medians,
)
from steadygrad.store.run import Run


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
    def broke_in_one_step(self) -> bool:
        """Whether the loss at the break was ``JUMPED`` times the median of the ``JUMP_BEFORE``
        finite losses before it, or not finite: a run that broke in one step, which no cause
        that only stalls learning does (dead units, a frozen layer)."""
        loss, broke = self.series(LOSS.name), self.broke_at
        if loss is None or broke is None:
            return False
        steps, values = loss
        at, before = values[steps == broke], values[(steps < broke) & np.isfinite(values)]
        if not len(at) or len(before) < JUMP_BEFORE:
            return False
        return not math.isfinite(at[0]) or at[0] >= JUMPED * np.median(before[-JUMP_BEFORE:])

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


# Steps after the break (or a climb found) within which a growth confirmed late, but begun
# before, may be first: gradients found growing later than that grew with the climb.
CONFIRMED_SOON = 10

# A loss at the break this many times the median of the JUMP_BEFORE before it: the run broke in
# one step (see RunFacts.broke_in_one_step).
JUMPED, JUMP_BEFORE = 10.0, 5


def _best_before_trouble(facts: RunFacts) -> int | None:
    """The step of the best sustained loss before the run broke, or of the whole run."""
    return facts.progress_until if facts.broke_at is not None else facts.best_loss_step


# Steps after a gradient spike within which what first shows is what its update threw.
THROWN_WITHIN = 2


# So is an adaptive one's (RMSprop, Adagrad: the rate times the gradient over its running
# root-mean-square), but for Adadelta's: its rate scales a ratio of running updates to
# gradients, unit-free, and is 1.0 by default.
UNIT_FREE_RATE = ("Adadelta",)


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


def _burst_before(facts: RunFacts, step: int) -> tuple[int, int, float] | None:
    """The burst of the learning rate (see :func:`_rate_bursts`) that ``step`` falls in, or
    ``CONFIRMED_SOON`` steps or fewer after, if any."""
    return next((b for b in _rate_bursts(facts) if b[0] <= step <= b[1] + CONFIRMED_SOON), None)


def _raised_before(facts: RunFacts, step: int, within: int = CONFIRMED_SOON) -> int | None:
    """The last step, ``within`` steps or fewer before ``step`` (or at it), at which some
    group's learning rate was raised 4x or more at a stroke; None if none was."""
    raised = [
        int(steps[i])
        for steps, _, i in _raised_at_a_stroke(facts, 4.0)
        if step - within <= steps[i] <= step
    ]
    return max(raised) if raised else None


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


# Weights that grew geometrically for this many steps, by this many times, while the loss set no
# new best level, before the run's trouble began: a multiplicative feedback on them (a decay or
# penalty of the wrong sign), which raises every gradient that flows through them.
RUNAWAY_SPAN, RUNAWAY_GROWTH = 80, 2.0
# Growth over the span that runs away even while the loss still improves (3% compounding a
# step: a learnt direction slows long before it is ten times larger; 4x would call a
# MobileBERT's weights, grown 4x after a poisoned step, a runaway).
RUNAWAY_ANYWAY = 10.0
EXPLOSION_LEAD = 10  # steps a gradient explosion's spikes come before the break they make


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


# REPLACED (detectors.stages): the weights' norm moved this many times its typical step-to-step
# change in one step, with no gradient spike to move it: something other than the optimizer
# replaced the weights.


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


ENDED_OVER = 10  # the last losses of a run that say where it ended


def _ended_at(facts: RunFacts) -> float | None:
    """The median of the run's last ``ENDED_OVER`` losses, when every loss of the run was finite
    and there were ``3 * ENDED_OVER`` or more; None otherwise."""
    loss = facts.series(LOSS.name)
    if loss is None or len(loss[1]) < 3 * ENDED_OVER or not np.isfinite(loss[1]).all():
        return None
    return float(np.median(loss[1][-ENDED_OVER:]))


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
