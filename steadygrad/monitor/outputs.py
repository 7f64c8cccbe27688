"""The model's real output, found where the loss is computed: on due steps, every
``F.cross_entropy`` call hands over the logits AND the targets, with no user code; so does
``F.nll_loss`` after a ``log_softmax``, and every ``log_softmax`` hands over the logits (a
distillation or preference loss written by hand, CTC); ``F.binary_cross_entropy_with_logits``
hands over a multi-label or binary head's logits, each a softmax over two classes; and
``F.multi_margin_loss`` (a multi-class hinge) hands over the scores it separates.

Recorded: the mean log-partition ``log sum exp(z)`` (what z-loss holds near 0), the largest
absolute logit and the logits' RMS, and the softmax-collapse fraction with the true targets. A
model trained without cross-entropy (a regression head, say) records none of them: the signal
says it is off in the run's config.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from steadygrad.core import Measurements, Record
from steadygrad.core.metrics import (
    LOGIT_LSE_MEAN,
    LOOK_CLOSER,
    OUTPUT_CLASSES,
    OUTPUT_EPSILON,
    OUTPUT_LOGIT_MAX,
    OUTPUT_LOGIT_MEAN,
    OUTPUT_LOGIT_RMS,
    OUTPUT_MODULE,
    OUTPUT_SCALE,
    OUTPUT_SHIFT_GRADIENT,
    OUTPUT_TARGETS_OUTSIDE,
    SOFTMAX_COLLAPSE,
)
from steadygrad.monitor.intercept import (
    SAME_VALUES,
    InterceptingSignal,
    autograd_step,
    saved_dim,
    uncompiled,
)
from steadygrad.monitor.output_logits import choice_rows, live_logits, softmax_collapse_mask


class CrossEntropyOutputSignal(InterceptingSignal):
    """Output-logit statistics and softmax collapse from every ``F.cross_entropy`` call
    (``nn.CrossEntropyLoss`` and Hugging Face losses call it) on due steps; softmax collapse
    also from ``F.nll_loss`` and from ``F.kl_div`` (distillation, on the rows whose target is
    one-hot), which take log-probabilities; the logit statistics also from every
    ``log_softmax`` (``torch.``, ``F.`` or the tensor method: a preference or distillation loss
    written by hand), and from a ``logsumexp`` the loss takes of a layer's raw scores outside
    the model's forward (a cross-entropy written by hand), unless a regression loss fits those
    same values in the step (Q-values beside a conservative Q-learning penalty). Collapse needs
    the targets: a row exactly one-hot at its largest logit is
    a confident right answer as often as a collapse (a policy on a deterministic sequence).

    Rows whose target is ``ignore_index`` are left out; soft (probability) targets count for the
    logit statistics but not for softmax collapse. ``record.meta[OUTPUT_MODULE]`` names the
    module that produced the logits (the head), when a leaf module did,
    ``record.meta[OUTPUT_CLASSES]`` how many classes they score, and
    ``record.meta[OUTPUT_EPSILON]`` the resolution they were computed at.

    Example:
        >>> signal = CrossEntropyOutputSignal(every=25)   # on by default in the Monitor
    """

    metrics = (
        LOGIT_LSE_MEAN,
        OUTPUT_LOGIT_MAX,
        OUTPUT_LOGIT_RMS,
        OUTPUT_LOGIT_MEAN,
        OUTPUT_SHIFT_GRADIENT,
        OUTPUT_SCALE,
        OUTPUT_TARGETS_OUTSIDE,
        SOFTMAX_COLLAPSE,
    )

    def __init__(self, every: int = 25) -> None:
        super().__init__(every)
        self._sums: dict[str, torch.Tensor] = {}
        self._head: str | None = None
        self._classes = 0
        self._epsilon = 0.0  # the coarsest precision of the logits read this step
        self._scale: float | None = None  # the plain number the logits were scaled by
        self._scalars: dict[int, str] = {}  # the model's one-element parameters, by id
        self._matrices: dict[int, str] = {}
        # the autograd nodes (and output) whose gradient in the logits this step reads
        self._watched: set[tuple[Any, int]] = set()
        self._node_hooks: list[Any] = []
        self._summed_from: set[Any] = set()
        self._regressed: set[Any] = set()
        self._softmaxed = False  # a softmax's logits were read this step (not a logsumexp's)
        self.seen = False

    def attach(self, monitor: Any) -> None:
        super().attach(monitor)
        named = list(monitor.model.named_parameters())
        self._scalars = {id(p): n for n, p in named if p.numel() == 1}
        # weight matrices, by id, to the module that holds them (a head used functionally)
        self._matrices = {id(p): n.rpartition(".")[0] for n, p in named if p.dim() >= 2}

    def watched(self) -> dict[Callable, Callable]:
        return {
            F.cross_entropy: self._observe,
            F.kl_div: self._observe_kl,
            F.nll_loss: self._observe_nll,
            F.binary_cross_entropy_with_logits: self._observe_binary,
            F.multi_margin_loss: self._observe_margin,
            torch.log_softmax: self._observe_log_softmax,
            F.log_softmax: self._observe_log_softmax,
            torch.Tensor.log_softmax: self._observe_log_softmax,
            torch.logsumexp: self._observe_logsumexp,
            torch.Tensor.logsumexp: self._observe_logsumexp,
            F.mse_loss: self._observe_regression,
            F.smooth_l1_loss: self._observe_regression,
            F.huber_loss: self._observe_regression,
            F.l1_loss: self._observe_regression,
        }

    def applies(self) -> bool | str:
        if self.seen:
            return True
        return (
            "no cross-entropy, nll_loss, log_softmax, binary cross-entropy or multi-class hinge "
            "call seen"
        )

    def begin(self, step: int) -> None:
        self._sums, self._head, self._classes, self._epsilon = {}, None, 0, 0.0
        self._scale = None
        self._watched = set()
        # where this step's logsumexp reads and regression losses took their values from
        self._summed_from, self._regressed, self._softmaxed = set(), set(), False
        self._drop_node_hooks()
        super().begin(step)

    def _observe(self, args: tuple, kwargs: dict[str, Any]) -> None:
        logits = args[0] if args else kwargs["input"]
        target = args[1] if len(args) > 1 else kwargs["target"]
        if not isinstance(logits, torch.Tensor) or logits.dim() < 1:
            return
        z = logits.detach()
        if z.dim() > 1:
            z = z.movedim(1, -1)  # classes last: (N, C, d1, ...) -> (N, d1, ..., C)
        self._head = self._head or self._head_of(logits, z.shape[-1])
        self._classes = self._classes or z.shape[-1]
        self._epsilon = max(self._epsilon, _epsilon_of(logits))
        self._scale = self._scale or _fixed_scale(logits)
        z = z.reshape(-1, z.shape[-1])
        if not z.numel():
            return
        hard = not target.is_floating_point()
        keep = None
        if hard:
            z, target, keep = _mask_ignored(z, target, args, kwargs)
        self.seen = self._softmaxed = True
        self._watch_shift(logits)
        parts, live = _logit_parts(z, keep)
        # PyTorch applies a label smoothing above 0 only: one typed below 0 is silently dropped
        smoothing = max(_argument(args, kwargs, 7, "label_smoothing") or 0.0, 0.0)
        weight = _weight_of(args, kwargs)
        if hard:
            parts["collapsed"] = (softmax_collapse_mask(z, target) & keep).float().sum()
            parts["hard_rows"] = (live.sum(dim=-1) >= 2).float().sum()  # rows with a choice
            if smoothing or weight is not None:
                reduction = _argument(args, kwargs, 6, "reduction") or "mean"
                parts.update(_rows_outside(target, keep, z.shape[-1], weight, smoothing, reduction))
        elif target.shape == logits.shape:
            parts.update(_negative_targets(target, weight, smoothing))
        self._add(parts)

    def _observe_log_softmax(self, args: tuple, kwargs: dict[str, Any]) -> Callable | None:
        """``log_softmax(logits, dim)``: the logits' statistics; and, handed the
        log-probabilities it outputs, the loss's gradient in them (:meth:`_read_log_probs`)."""
        logits = args[0] if args else kwargs.get("input")
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        if not isinstance(logits, torch.Tensor) or not isinstance(dim, int) or logits.dim() < 1:
            return None  # no dim given (deprecated): torch guesses one, and we do not
        if self._a_target(logits):
            return None
        self._softmaxed = True
        self._read_logits(logits, dim)
        return partial(self._watch_log_probs, dim)

    def _a_target(self, logits: torch.Tensor) -> bool:
        """Whether ``logits`` are what the model is fitted to, not its output: no gradient
        flows through them and no module of the model output them (a frozen teacher's logits,
        computed under ``no_grad``, whose ``log_softmax`` is a distillation's target). A
        sharp teacher's would read as the model's own logits, born wide."""
        return not logits.requires_grad and not (
            self.producer(logits) or self.output_behind(logits) is not None
        )

    def _watch_log_probs(self, dim: int, args: tuple, kwargs: dict[str, Any]) -> None:
        """Read, as the backward pass goes through them, the loss's gradient in the
        log-probabilities ``args[0]`` (:meth:`_read_log_probs`)."""
        logp = args[0]
        if isinstance(logp, torch.Tensor) and logp.requires_grad and logp.shape[dim] >= 2:
            read = partial(self._read_log_probs, logp.detach(), dim)
            self._node_hooks.append(logp.register_hook(read))

    @uncompiled  # see monitor.intercept
    def _read_log_probs(self, logp: torch.Tensor, dim: int, grad: torch.Tensor) -> None:
        """The rows whose loss pushes a class's log-probability down however improbable it
        already is, while it raises another's: a target below 0 (``outside``, of ``targets``,
        the rows the loss reads). A target ``t >= 0`` (cross-entropy, distillation, a
        smoothing) only ever raises a log-probability. A term ``b f(p_c)`` of the probability
        itself (an entropy, an unlikelihood term) pushes it by ``b p_c f'(p_c)``, at most about
        ``b p_c (|log p_c| + 1)``, under ``105 b p_c`` for any float32 probability, where the
        batch's largest push is ``b / 2`` or more once a row is sure. A target below 0 pushes by
        ``|t_c|`` however small ``p_c`` gets (a label smoothing typed below 0 in a soft
        cross-entropy written by hand): past ``PUSHED_PAST`` times ``p_c`` of the batch's
        largest push, it is no term of the probability."""
        try:
            with torch.no_grad():
                classes = logp.shape[dim]
                g = grad.detach().float().movedim(dim, -1).reshape(-1, classes)
                p = logp.float().movedim(dim, -1).reshape(-1, classes).exp()
                size = g.abs()
                down = (g > 0) & (g > PUSHED_PAST * p * size.amax())
                read = size.amax(dim=-1) > 0
                rows = down.any(dim=-1) & (g < 0).any(dim=-1) & read
                self._add({"outside": rows.float().sum(), "targets": read.float().sum()})
        except Exception:  # noqa: BLE001 - a measurement never breaks the backward pass
            pass

    def _observe_margin(self, args: tuple, kwargs: dict[str, Any]) -> None:
        """``F.multi_margin_loss(scores, target)`` (``nn.MultiMarginLoss``, a multi-class SVM's
        hinge): the scores a margin separates, read as logits for their scale (a margin typed
        1000 for 1 pushes them apart without end, as a loss with no minimum does); no
        collapse, as no softmax is taken of them."""
        scores = args[0] if args else kwargs.get("input")
        if isinstance(scores, torch.Tensor) and scores.is_floating_point() and scores.dim():
            self._read_logits(scores, -1)

    def _observe_logsumexp(self, args: tuple, kwargs: dict[str, Any]) -> None:
        """``logsumexp(logits, dim)`` in the loss, outside the model's forward, over a layer's
        raw scores: a cross-entropy written by hand (``logits.logsumexp(-1) - logits[y]``),
        read as ``log_softmax``'s input is, its log-partition detached or not. One inside a
        forward (a router's z-loss, an energy) or over anything else (a mixture's
        log-likelihoods, attention scores) is not the output's."""
        logits = args[0] if args else kwargs.get("input")
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        dim = dim[0] if isinstance(dim, (tuple, list)) and len(dim) == 1 else dim
        if not isinstance(logits, torch.Tensor) or not isinstance(dim, int) or logits.dim() < 1:
            return
        if self.in_forward() or not (self.producer(logits) or _made_by_a_linear(logits)):
            return
        self._summed_from.add(self._source(logits))
        self._read_logits(logits, dim)

    def _observe_regression(self, args: tuple, kwargs: dict[str, Any]) -> None:
        """A regression loss's input (``F.mse_loss(q.gather(1, a), target)``): values with a
        meaning of their own, which a logsumexp over the same scores does not make logits (a
        conservative Q-learning penalty, ``logsumexp(q) - q[a]``, beside its TD loss)."""
        values = args[0] if args else kwargs.get("input")
        if isinstance(values, torch.Tensor):
            self._regressed.add(self._source(values))

    def _source(self, t: torch.Tensor) -> Any:
        """The autograd step that computed ``t``'s values, through reshapes, casts and picks of
        some of them (``gather``, indexing); for a detached copy of a module's output, that
        output's; else the tensor's storage."""
        behind = self.output_behind(t) if t.grad_fn is None else None
        t = t if behind is None else behind
        node = t.grad_fn
        while node is not None and autograd_step(node) in PICKS_VALUES:
            following = [n for n, _ in node.next_functions if n is not None]
            if len(following) != 1:
                break
            node = following[0]
        return node if node is not None else t.untyped_storage().data_ptr()

    def _read_logits(self, logits: torch.Tensor, dim: int) -> None:
        """The statistics of ``logits`` whose classes lie along ``dim``."""
        z = logits.detach().movedim(dim, -1)
        if z.shape[-1] < 2 or not z.numel():
            return
        self._head = self._head or self._head_of(logits, z.shape[-1])
        self._classes = self._classes or z.shape[-1]
        self._epsilon = max(self._epsilon, _epsilon_of(logits))
        z = z.reshape(-1, z.shape[-1])
        self.seen = True
        self._watch_shift(logits)
        self._add(_logit_parts(z)[0])

    def _observe_binary(self, args: tuple, kwargs: dict[str, Any]) -> None:
        """``F.binary_cross_entropy_with_logits(z, target)``: each logit ``z`` scores one yes or
        no, ``sigmoid(z)``, the softmax over the two classes ``[-z/2, z/2]``; read as those
        logits: ``log Z = log(2 cosh(z/2))``, ``log 2`` at ``z = 0`` and ``|z|/2`` far from it,
        however the logit runs off (to either sign: targets outside ``[0, 1]`` have no finite
        minimiser). The two classes' logits have no common shift to read (their mean is 0),
        and no collapse is read: a ``sigmoid`` saturated at a right answer is the loss's
        minimum, not a stalled row. Elements of weight 0 (masked labels) are left out. The
        share of targets outside ``[0, 1]`` is recorded too: the loss has no minimum there."""
        logits = args[0] if args else kwargs.get("input")
        target = args[1] if len(args) > 1 else kwargs.get("target")
        weight = args[2] if len(args) > 2 else kwargs.get("weight")
        if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
            return
        if not logits.numel():
            return
        self._head = self._head or self._head_of(logits, logits.shape[-1] if logits.dim() else 1)
        self._classes = self._classes or 2
        self._epsilon = max(self._epsilon, _epsilon_of(logits))
        self._scale = self._scale or _fixed_scale(logits)
        z = logits.detach().float().reshape(-1)
        self._softmaxed = True
        keep = torch.ones_like(z, dtype=torch.bool)
        if isinstance(weight, torch.Tensor):
            keep = torch.broadcast_to(weight.detach(), logits.shape).reshape(-1) != 0
        self.seen = True
        half, kept = torch.where(keep, z, 0.0) / 2, keep.float().sum()
        parts = {
            "lse": torch.where(keep, torch.logaddexp(half, -half), 0.0).sum(),
            "rows": kept,
            "max": half.abs().max(),
            "sq": 2 * (half * half).sum(),  # both classes' logits, z/2 and -z/2
            "count": 2 * kept,
        }
        if isinstance(target, torch.Tensor) and target.shape == logits.shape:
            t = target.detach().reshape(-1)
            parts["outside"] = (((t < 0) | (t > 1)) & keep).float().sum()
            parts["targets"] = kept
        self._add(parts)

    def _observe_nll(self, args: tuple, kwargs: dict[str, Any]) -> None:
        """``F.nll_loss(log_probs, target)``: softmax collapse with the true targets (the
        statistics come from the ``log_softmax`` that made the log-probabilities)."""
        logp = args[0] if args else kwargs.get("input")
        target = args[1] if len(args) > 1 else kwargs.get("target")
        if not isinstance(logp, torch.Tensor) or not isinstance(target, torch.Tensor):
            return
        if logp.dim() < 2 or target.is_floating_point():
            return
        if not _made_by_log_softmax(logp):
            if _made_by_a_linear(logp):
                # a layer's raw scores, no log-probabilities (a log_softmax left out): the
                # loss, -score[target], is unbounded below; they are the logits, read as such
                self._observe(args, kwargs)
            return  # other log-probabilities (StableMax's, say) have no softmax to collapse
        z = logp.detach().movedim(1, -1).reshape(-1, logp.shape[1])
        if not z.numel():
            return
        z, target, keep = _mask_ignored(z, target, args, kwargs)
        self._head = self._head or self._head_of(logp, z.shape[-1])
        self.seen = True
        collapsed = (softmax_collapse_mask(z, target) & keep).float().sum()
        hard_rows = (choice_rows(z.float()) & keep).float().sum()
        self._add({"collapsed": collapsed, "hard_rows": hard_rows})

    def _observe_kl(self, args: tuple, kwargs: dict[str, Any]) -> None:
        """Distillation: ``F.kl_div(log_softmax(logits), teacher_probs)``. Its input is the
        logits shifted per row, so it tells softmax collapse (not the logits' scale) on the rows
        whose target is one-hot."""
        logp = args[0] if args else kwargs["input"]
        target = args[1] if len(args) > 1 else kwargs["target"]
        log_target = args[5] if len(args) > 5 else kwargs.get("log_target", False)
        if not isinstance(logp, torch.Tensor) or logp.dim() < 1 or logp.shape != target.shape:
            return
        z = logp.detach().reshape(-1, logp.shape[-1])
        p = target.detach().reshape(-1, logp.shape[-1])
        p = p.exp() if log_target else p
        one_hot = p.amax(dim=-1) == 1  # no host read here: rows are counted on the device
        self._head = self._head or self._head_of(logp, z.shape[-1])
        collapsed = softmax_collapse_mask(z, p.argmax(dim=-1)) & one_hot
        rows = one_hot & choice_rows(z)
        self._add({"collapsed": collapsed.float().sum(), "hard_rows": rows.float().sum()})

    def _watch_shift(self, logits: torch.Tensor) -> None:
        """Read, as the backward pass goes through them, the loss's gradient in the logits'
        common shift (every class of a row raised alike), against its size.

        A loss of the softmax alone cannot see that shift: cross-entropy's gradient in a row,
        ``softmax - target``, sums to zero, and so does label smoothing's, focal loss's or a
        distillation's. Only a term on the logits' level does: a z-loss holds them down
        (positive), one with its sign flipped rewards raising them (negative), whatever the
        model. The gradient is read at the operation that computed the logits' values (see
        :func:`_values_made_at`), where every use's gradient has been summed: a term computed
        beside the loss function (a z-loss on ``outputs.logits``) is in it too."""
        if logits.grad_fn is None:  # detached: its gradient is the module output's it copies
            logits = self.output_behind(logits)
        made = _values_made_at(logits) if logits is not None else None
        if made is None or made in self._watched:
            return
        node, index = made
        self._watched.add(made)
        self._node_hooks.append(node.register_prehook(partial(self._read_shift, index)))

    @uncompiled  # see monitor.intercept
    def _read_shift(self, index: int, grads: tuple) -> None:
        grad = grads[index] if index < len(grads) else None
        if grad is None:
            return
        try:
            g = grad.detach().float()
            self._add({"shift": g.sum(), "shift_size": g.abs().sum()})
        except Exception:  # noqa: BLE001 - a measurement never breaks the backward pass
            pass

    def before_update(self) -> None:
        super().before_update()
        self._drop_node_hooks()  # the backward pass is over (a retained graph keeps them)

    def end(self, step: int) -> None:
        super().end(step)
        self._drop_node_hooks()

    def detach(self) -> None:
        super().detach()
        self._drop_node_hooks()

    def _drop_node_hooks(self) -> None:
        for handle in self._node_hooks:
            handle.remove()
        self._node_hooks.clear()

    def _head_of(self, logits: torch.Tensor, width: int) -> str | None:
        """Where the logits come from: the leaf module that output them; else a one-element
        parameter that scales them within a few autograd steps (a contrastive temperature,
        CLIP's ``logit_scale``); else the leaf they were computed from (a segmentation head's
        map, upsampled and moved channels-last); else a leaf of their width they were computed
        from within a few steps, by any input; with no graph to follow, the latest such leaf."""
        return (
            self.producer(logits)
            or _scale_parameter(logits, self._scalars)
            or _weight_owner(logits, self._matrices)
            or self.upstream(logits)
            # a leaf as wide as the logits, in their graph within a few steps (a readout summed
            # over time steps); with no graph to follow, the latest such leaf, a guess: a width
            # that only matches names a module that may feed the logits nothing
            or (
                self.feeding(logits, "", depth=6, width=width)
                if logits.grad_fn is not None
                else self.producer(logits, width)
            )
        )

    def _add(self, parts: dict[str, torch.Tensor]) -> None:
        for key, value in parts.items():
            previous = self._sums.get(key)
            if key == "max":
                self._sums[key] = value if previous is None else torch.maximum(previous, value)
            else:
                self._sums[key] = value if previous is None else previous + value

    def measure(self, step: int, out: Measurements) -> None:
        s = self._sums
        if not s:
            return
        if not self._softmaxed and self._summed_from & self._regressed:
            self._sums = {}  # a logsumexp over values regressed on: no logits were read
            return
        if "lse" in s:
            out.stash(self, s["rows"])  # none (every target ignored): no logits were read
            out.put(LOGIT_LSE_MEAN.name, s["lse"] / s["rows"])
            out.put(OUTPUT_LOGIT_MAX.name, s["max"])
            out.put(OUTPUT_LOGIT_RMS.name, (s["sq"] / s["count"]).sqrt())
            if "sum" in s:  # a softmax's logits were read (two classes' always sum to 0)
                out.put(OUTPUT_LOGIT_MEAN.name, s["sum"] / s["count"])
        if "shift" in s:  # no gradient at all reads as no shift
            size = s["shift_size"].clamp_min(torch.finfo(torch.float32).tiny)
            out.put(OUTPUT_SHIFT_GRADIENT.name, s["shift"] / size)
        if "collapsed" in s:
            out.put(SOFTMAX_COLLAPSE.name, s["collapsed"] / s["hard_rows"])
        if "outside" in s:
            out.put(OUTPUT_TARGETS_OUTSIDE.name, s["outside"] / s["targets"])
        self._sums = {}

    def finish(self, record: Record, raw: Sequence[float]) -> None:
        if raw and raw[0] == 0:  # every row's target was ignore_index: nothing was read
            for metric in (LOGIT_LSE_MEAN, OUTPUT_LOGIT_MAX, OUTPUT_LOGIT_RMS, OUTPUT_LOGIT_MEAN):
                if metric.name in record.values:
                    del record.values[metric.name]
        if self._head:
            record.meta[OUTPUT_MODULE] = self._head
        if self._scale is not None and LOGIT_LSE_MEAN.name in record.values:
            record.values[OUTPUT_SCALE.name] = self._scale
        if self._classes and LOGIT_LSE_MEAN.name in record.values:
            record.meta[OUTPUT_CLASSES] = self._classes
            record.meta[OUTPUT_EPSILON] = self._epsilon
        if math.isnan(record.values.get(OUTPUT_TARGETS_OUTSIDE.name, 0.0)):
            del record.values[OUTPUT_TARGETS_OUTSIDE.name]  # every label's weight was 0
        collapse = record.values.get(SOFTMAX_COLLAPSE.name)
        if collapse is not None and math.isnan(collapse):
            del record.values[SOFTMAX_COLLAPSE.name]  # soft targets only: no row to collapse
        elif collapse is not None:
            self.seen = True  # a distillation loss with one-hot rows counts once it is read
            if collapse > 0 and self.due(record.step):
                # a row's logit gap is past float32's reach: collapse may be beginning (asked
                # on the cadence's readings only, so a collapsed run is not read every step)
                record.meta[LOOK_CLOSER] = True


def _values_made_at(logits: torch.Tensor, depth: int = 8) -> tuple[Any, int] | None:
    """The autograd node (and which of its outputs) that computed the values ``logits``
    holds: found through up to ``depth`` steps that only reshape, slice or cast them (the
    logits upcast, shifted and flattened for the loss); None for a tensor with no graph. The
    gradient that node receives is the whole loss's in those values, every use's, where the
    loss function's input had only its own use."""
    node, index = logits.grad_fn, logits.output_nr
    for _ in range(depth):
        if node is None:
            return None
        if autograd_step(node) not in SAME_VALUES or _slices_classes(node):
            return node, index
        following = [(n, i) for n, i in node.next_functions if n is not None]
        if len(following) != 1:
            return node, index
        node, index = following[0]
    return node, index


# A term of a class's probability pushes its log-probability down by at most about
# p (|log p| + 1) of its scale, and |log p| < 104 for any float32 probability above 0: a push
# this many times p of the batch's largest is a target below 0's (see
# CrossEntropyOutputSignal._read_log_probs).
PUSHED_PAST = 1000.0

# Autograd steps that pass on some of their input's values unchanged (a picked action's
# Q-value, a row's target score) as well as those that pass on all of them.
PICKS_VALUES = SAME_VALUES | {"GatherBackward", "IndexBackward", "TakeAlongDimBackward"}


def _slices_classes(node: Any) -> bool:
    """Whether an autograd step took part of its input's last dimension (``out[:, 1:]``: the
    logits sliced from an output they share with another head's columns, whose loss's gradient
    the whole output's holds too): read there, the gradient is the logits' alone."""
    if autograd_step(node) != "SliceBackward":
        return False
    sizes = getattr(node, "_saved_self_sym_sizes", None)
    dim = saved_dim(node)
    if not sizes or dim is None:
        return False
    dim = dim % len(sizes)
    start, end = node._saved_start or 0, node._saved_end
    whole = start == 0 and (end is None or end >= sizes[dim]) and node._saved_step == 1
    return dim == len(sizes) - 1 and not whole


def _made_by_log_softmax(t: torch.Tensor, depth: int = 4) -> bool:
    """Whether ``t`` is a ``log_softmax`` output, seen through up to ``depth`` views or casts
    in its autograd graph (False without one: a tensor made under ``no_grad``)."""
    node = t.grad_fn
    for _ in range(depth):
        if node is None:
            return False
        if type(node).__name__.startswith("LogSoftmaxBackward"):
            return True
        node = node.next_functions[0][0] if node.next_functions else None
    return False


# Autograd steps of a linear layer's output (``nn.Linear``, ``F.linear``, ``x @ W``).
LINEAR_STEPS = frozenset({"AddmmBackward", "MmBackward", "LinearBackward"})
# Steps between such a product and the logits: views, a scale, a bias added.
BETWEEN_LOGITS = SAME_VALUES | {"MulBackward", "DivBackward", "AddBackward"}


def _made_by_a_linear(t: torch.Tensor, depth: int = 4) -> bool:
    """Whether ``t`` is a linear layer's output, seen through up to ``depth`` views or casts in
    its autograd graph: raw scores, which no log-probability is."""
    return _linear_step(t, depth, SAME_VALUES) is not None


def _linear_step(t: torch.Tensor, depth: int, through: frozenset[str]) -> Any:
    """The autograd step of the product (``LINEAR_STEPS``) that made ``t``, reached within
    ``depth`` steps through those named in ``through`` only; None when there is none."""
    node = t.grad_fn
    for _ in range(depth):
        if node is None:
            return None
        step = autograd_step(node)
        if step in LINEAR_STEPS:
            return node
        if step not in through:
            return None
        node = node.next_functions[0][0] if node.next_functions else None
    return None


def _mask_ignored(
    z: torch.Tensor, target: torch.Tensor, args: tuple, kwargs: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``z`` (``(N, C)``) with the rows whose class ``target`` is the loss's ``ignore_index``
    (the 5th argument of ``F.cross_entropy`` and ``F.nll_loss``) set to ``+inf``, the targets
    with those rows' set to class 0, and which rows are kept. Rows are masked, not selected:
    selecting them would read how many there are on the host, a device synchronisation. An
    ``+inf`` row lowers no minimum (:func:`live_logits`) and sums to no one-hot softmax."""
    target = target.detach().reshape(-1)
    keep = target != kwargs.get("ignore_index", args[4] if len(args) > 4 else -100)
    masked = torch.where(keep[:, None], z, torch.inf)
    return masked, torch.where(keep, target, 0), keep


def _logit_parts(
    z: torch.Tensor, keep: torch.Tensor | None = None
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Sums over the rows of ``z`` (``(N, C)``; those of ``keep`` alone when given), on the
    device: of log Z, the rows, the squares and values of the logits (mask fills, padding or a
    causal mask, are no logits the model produced: left out) and how many there are; and their
    largest magnitude. With them, which entries are live logits (:func:`live_logits`)."""
    z32 = z.float()
    live = live_logits(z32)
    lse = torch.logsumexp(z32, dim=-1)
    if keep is None:
        rows = torch.full((), float(z.shape[0]), device=z.device)  # a fill: no host copy
    else:
        live, lse, rows = live & keep[:, None], torch.where(keep, lse, 0.0), keep.float().sum()
    learnt = torch.where(live, z32, 0.0)
    parts = {
        "lse": lse.sum(),
        "rows": rows,
        "max": learnt.abs().max(),
        "sq": (learnt * learnt).sum(),
        "sum": learnt.sum(),
        "count": live.float().sum(),
    }
    return parts, live


def _argument(args: tuple, kwargs: dict[str, Any], index: int, name: str) -> Any:
    """A call's argument, given by position or by name (None where it was not given)."""
    return args[index] if len(args) > index else kwargs.get(name)


def _weight_of(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor | None:
    """The class weights of a ``cross_entropy`` or ``nll_loss`` call (its 3rd argument)."""
    weight = _argument(args, kwargs, 2, "weight")
    return weight if isinstance(weight, torch.Tensor) and weight.dim() == 1 else None


def _epsilon_of(logits: torch.Tensor) -> float:
    """The machine epsilon of the coarsest precision ``logits`` were computed in: their dtype's,
    or autocast's where it is on (a head run in bfloat16, its logits upcast for the loss)."""
    epsilon = torch.finfo(logits.dtype).eps if logits.is_floating_point() else 0.0
    device = logits.device.type
    if torch.is_autocast_enabled(device):
        epsilon = max(epsilon, torch.finfo(torch.get_autocast_dtype(device)).eps)
    return epsilon


# Autograd steps that shape a weight before a product uses it: a transpose, a view, a
# normalisation (a cosine classifier's ``F.normalize(head.weight)``).
WEIGHT_SHAPING = SAME_VALUES | {
    f"{op}Backward"
    for op in ("Div", "Mul", "ClampMin", "Clamp", "LinalgVectorNorm", "Norm", "Sqrt", "Pow")
}


def _weight_owner(logits: torch.Tensor, matrices: dict[int, str], depth: int = 4) -> str | None:
    """The module whose weight matrix the product that made ``logits`` took (within ``depth``
    autograd steps of them, through steps that keep their values), used by the forward
    itself rather than by the module (``F.linear(h, F.normalize(self.head.weight))``): the
    head. None when no such product or weight is found, or the weight is the root model's."""
    node = _linear_step(logits, depth, BETWEEN_LOGITS)
    if node is None:
        return None
    # a matrix the model itself holds ("") names no module: the input's maker does
    return (
        _first_leaf_in([n for n, _ in node.next_functions], matrices, depth, WEIGHT_SHAPING) or None
    )


# Autograd steps of a product or quotient with a plain number (``logits / T``: the number is
# kept as a 0-dim tensor on the CPU, read with no device sync).
SCALING_STEPS = {"MulBackward": 1, "DivBackward": -1}


def _fixed_scale(logits: torch.Tensor, depth: int = 4) -> float | None:
    """The plain number the logits were multiplied by after the step that made them (the
    product of every ``* c`` and ``/ c`` within ``depth`` autograd steps, through views): an
    annealed temperature written in the forward or the loss. None where there is none."""
    node, scale, found = logits.grad_fn, 1.0, False
    for _ in range(depth):
        if node is None:
            break
        step = autograd_step(node)
        power = SCALING_STEPS.get(step)
        try:
            other = getattr(node, "_saved_other", None) if power else None
        except RuntimeError:  # the graph was freed (a loss taken again after backward)
            return None
        if isinstance(other, torch.Tensor):
            if other.dim() or other.requires_grad or other.device.type != "cpu":
                break  # a tensor of the model's (a learnt scale), not a plain number
            other = float(other)
        if isinstance(other, (int, float)):
            scale *= float(other) ** power
            found = True
        elif step not in SAME_VALUES:
            break
        node = node.next_functions[0][0] if node.next_functions else None
    return scale if found and math.isfinite(scale) and scale != 0 else None


def _negative_targets(
    target: torch.Tensor, weight: torch.Tensor | None = None, smoothing: float = 0.0
) -> dict[str, torch.Tensor | float]:
    """Soft targets' entries below 0 (``outside``, of ``targets``), as the loss weighs them
    (a class weight, a label smoothing: ``t (1 - e) + e / C``): the cross-entropy
    ``-sum_c t_c log p_c`` falls without end as a class of negative target is driven to
    probability 0, so it has no minimum (a teacher's raw logits passed for its probabilities)."""
    t = target.detach().float()
    t = t * (1 - smoothing) + smoothing / t.shape[1 if t.dim() > 1 else 0]  # classes: dim 1
    if weight is not None:
        t = t * weight.detach().float().reshape(-1, *([1] * (t.dim() - 2)))
    return {"outside": (t < 0).float().sum(), "targets": float(t.numel())}


def _rows_outside(
    target: torch.Tensor,
    keep: torch.Tensor,
    classes: int,
    weight: torch.Tensor | None,
    smoothing: float,
    reduction: str,
) -> dict[str, torch.Tensor]:
    """The kept rows (``outside``, of ``targets``) whose target, as a cross-entropy with class
    ``weight`` and ``label_smoothing`` weighs it, has an entry below 0: the target class at
    ``(1 - e + e / C) w_y``, every other class ``c`` at ``e w_c / C``, all over the rows' summed
    weight under a mean reduction (whose sign then cancels theirs). The loss falls without end
    as such a class is driven to probability 0 (a weight of ``log(freq)`` that lost its minus
    sign): it has no minimum, and pushes those logits on for good. On the device: no host
    read.

    Example:
        >>> rows = _rows_outside(torch.tensor([0, 1]), torch.tensor([True, True]), 2,
        ...                      torch.tensor([0.5, -1.0]), 0.0, "sum")
        >>> rows["outside"].item(), rows["targets"].item()
        (1.0, 2.0)
    """
    device = target.device
    w = torch.ones(classes, device=device) if weight is None else weight.detach().float()
    w = w.to(device)
    w_row = w[target]
    sign = torch.ones((), device=device)
    if reduction == "mean":
        sign = torch.where(keep, w_row, 0.0).sum().sign()
    below = (smoothing * w * sign < 0).float()  # the classes whose off-target entry is below 0
    elsewhere = below.sum() - below[target]  # below 0 at a class other than the row's own
    own = (1 - smoothing + smoothing / classes) * w_row * sign < 0
    outside = (own | (elsewhere > 0)) & keep
    return {"outside": outside.float().sum(), "targets": keep.float().sum()}


def _scale_parameter(logits: torch.Tensor, scalars: dict[int, str], depth: int = 5) -> str | None:
    """The name of a one-element parameter within ``depth`` autograd steps of ``logits``: a
    scale set on logits that no module produced (``sim / temperature``)."""
    return _first_leaf_in([logits.grad_fn], scalars, depth)


def _first_leaf_in(
    nodes: list[Any], wanted: dict[int, str], depth: int, through: frozenset[str] | None = None
) -> str | None:
    """What ``wanted`` holds for the first parameter (by id) met within ``depth`` autograd
    steps of ``nodes``, breadth first, through the steps named in ``through`` only (any, when
    None); None when none is met."""
    frontier, seen = list(nodes), set()
    for _ in range(depth):
        following = []
        for node in frontier:
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            variable = getattr(node, "variable", None)  # a leaf: AccumulateGrad
            if variable is not None:
                if id(variable) in wanted:
                    return wanted[id(variable)]
                continue
            if through is None or autograd_step(node) in through:
                following += [n for n, _ in node.next_functions]
        frontier = following
    return None
