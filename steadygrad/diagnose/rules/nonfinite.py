"""Non-finite values and float16 overflow: where a NaN or Inf was first made, and the overflows a
loss scaler caught (``nonfinite``, ``amp_overflow``).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from steadygrad.core import Finding
from steadygrad.core.metrics import (
    AMP_SCALE,
    FLOAT16_OVERFLOW,
    GRAD_NORM,
    INPUT_RMS,
    LOSS,
    NONFINITE_GRADS,
    OPTIMIZER_SKIPPED,
)
from steadygrad.diagnose.detectors.training import AMP_OVERFLOW, NONFINITE, NONFINITE_ORIGIN
from steadygrad.diagnose.rules.base import Found, _first, _inside, _natural
from steadygrad.diagnose.rules.facts import RunFacts, _autopilot_actions
from steadygrad.diagnose.rules.series import _family_at, _modules_of, _skipped_steps


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
