"""Reads of the learning rates and the optimizer's state that several causes share: groups whose
rates stand apart, raises at a stroke and whether they passed, bursts, and restarts.
"""

from __future__ import annotations

import math

import numpy as np

from steadygrad.core.metrics import (
    LOGIT_LSE_MEAN,
    LOSS,
    OPTIMIZER_FAMILY,
    OPTIMIZER_RESTARTED,
    PARAM_GROUPS,
    SCALAR_PARAMETERS,
    UPDATE_RATIO,
)
from steadygrad.diagnose.detectors.training import GRAD_NORM_SPIKE, LOSS_SPIKE, NONFINITE
from steadygrad.diagnose.detectors.transformer import (
    ATTENTION_LOGIT_GROWTH,
    OUTPUT_LOGIT_DIVERGENCE,
)
from steadygrad.diagnose.detectors.trends import GRADIENT_GROWTH, LOSS_DIVERGENCE
from steadygrad.diagnose.rules.base import (
    Found,
    _inside,
    _natural,
    _positive,
    _running_medians,
    layer_span,
)
from steadygrad.diagnose.rules.facts import (
    ENDED_OVER,
    EXPLOSION_LEAD,
    UNIT_FREE_RATE,
    RunFacts,
    _raised_at_a_stroke,
    _raised_before,
    _rate_bursts,
)
from steadygrad.diagnose.rules.series import _modules_of, _other_members

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
    # a group of scalar knobs (a learnt temperature or logit scale) is given a rate of its own
    scalars = set(facts.run.config.get(SCALAR_PARAMETERS) or ())
    weights = {k: names for k, names in members.items() if not set(names) <= scalars}
    rates = _group_rates(facts, weights)
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


def _median_update_ratio(facts: RunFacts, names: list[str]) -> float | None:
    """The median of the finite update ratios recorded for these parameters, or None."""
    values = []
    for name in names:
        series = facts.series(UPDATE_RATIO.key(name))
        if series is not None:
            values.append(series[1][np.isfinite(series[1])])
    values = np.concatenate(values) if values else np.array([])
    return float(np.median(values)) if len(values) else None


def _burst_said(burst: tuple[int, int, float]) -> str:
    """A burst of the learning rate (see :func:`_rate_bursts`) in words."""
    start, back, factor = burst
    return f"the learning rate was raised {factor:.3g}x at step {start} and put back at step {back}"


# What jolts a run: a spike of the loss or of the gradient norm, a climb, a NaN.
JOLTS = (LOSS_SPIKE, GRAD_NORM_SPIKE, LOSS_DIVERGENCE, NONFINITE)
# Losses before a raise of the learning rate that give the level the run stood at, and how
# close to that level the running median (of 5) of the losses after it must come back.
RAISE_LEVEL_OVER, BACK_AT_LEVEL = 20, 1.1


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
