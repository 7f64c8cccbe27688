"""A model that amplifies its own signal or gradient: exploded at its first record, amplified
through depth or along a stack, held down by clipping, or bursting through time into a NaN.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from steadygrad.core.metrics import (
    ACT_RMS,
    GRAD_NORM,
    GRAD_NORM_PRECLIP,
    INPUT_RMS,
    LOSS,
    PARAM_NORM,
)
from steadygrad.diagnose.detectors.training import GRAD_NORM_SPIKE, NONFINITE
from steadygrad.diagnose.detectors.transformer import GRADIENT_SPIKE
from steadygrad.diagnose.detectors.trends import (
    CHAIN_AMPLIFIED,
    STEP_GAIN,
    gain_chains,
    like_layers,
    rises_steadily,
)
from steadygrad.diagnose.rules.base import Found, _inside, _natural, layer_span
from steadygrad.diagnose.rules.facts import (
    EXPLOSION_LEAD,
    RunFacts,
    _autopilot_actions,
    _finite_until,
)
from steadygrad.diagnose.rules.series import _family_at, _skipped_steps

BURST = 100.0  # a gradient norm this many times its median so far: a burst, not drift


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
