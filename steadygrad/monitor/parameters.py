"""Per-parameter norms with multi-tensor ops: gradients, weights, and the size of an update.

:class:`ParameterStats` measures (device tensors only); :class:`ParameterSignal` is the built-in
signal that records them, counts non-finite entries, and names the parameter whose gradient went
non-finite first in the backward pass.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from steadygrad.core import Measurements, Members, Record, Signal
from steadygrad.core.checks import positive_int
from steadygrad.core.metrics import (
    FINISHED_LATE,
    FROZEN_AT_ATTACH,
    GRAD_NORM,
    GRADIENTS_NOT_APPLIED,
    LOSS,
    NONFINITE_GRADS,
    NONFINITE_PARAMS,
    OPTIMIZER_FAMILY,
    PARAM_NORM,
    UPDATE_RATIO,
)
from steadygrad.core.optimizer import optimizer_family
from steadygrad.monitor.tensor_groups import STACK_MAX_NUMEL, Parts, TensorGroups


class ParameterStats:
    """Measures the trainable parameters of a model, in ``named_parameters()`` order: those
    that require a gradient, and those the optimizer ``held`` holds (a layer frozen with
    ``requires_grad_(False)`` while the optimizer still holds it: its update ratio of 0 is how
    the mistake shows)."""

    def __init__(self, model: nn.Module, held: torch.optim.Optimizer | None = None) -> None:
        optimized = (
            set()
            if held is None
            else {id(p) for group in held.param_groups for p in group["params"]}
        )
        self.named = [
            (n, p) for n, p in model.named_parameters() if p.requires_grad or id(p) in optimized
        ]
        if not self.named:
            raise ValueError("model has no trainable parameters to monitor")
        self.names = [n for n, _ in self.named]
        self.params = [p for _, p in self.named]
        # The per-tensor families' members, named once: a step's values travel as arrays.
        self.members = {
            metric.name: Members(metric.name, self.names)
            for metric in (GRAD_NORM, PARAM_NORM, UPDATE_RATIO)
        }
        self._detached = [local_shard(p.detach()) for p in self.params]
        self._every = list(range(len(self.params)))
        # The norms, snapshots and dot products of many small tensors in a few kernels; built
        # once for all the parameters, and again only when some have no gradient.
        self.groups = TensorGroups(self._detached)
        self._subset: tuple[list[int], TensorGroups] | None = None
        self._sharded = any(callable(getattr(p, "to_local", None)) for p in self.params)
        # Under FSDP2 each process holds shards; the distributed Reducer then sets this to
        # combine per-shard norms and counts over the processes (see Shards).
        self.shards: Shards | None = None
        self._snapshot: Parts | None = None
        self._snapshot_shapes: list[torch.Size] = []
        # Gradient norms measured earlier in this step (by the autopilot, before the update).
        self._grad_cache: tuple[list[int], torch.Tensor] | None = None
        self.backward_order: list[int] | None = None
        # One small parameter whose gradient tells whether a backward pass ran since last time
        # (chosen among those that have a gradient, the first time any has one).
        self._probe: int | None = None
        self._probe_seen: tuple[Any, int] | None = None

    # -- gradients and weights ------------------------------------------------------------------
    def grad_norms(self) -> tuple[list[int], torch.Tensor]:
        """Indices of the parameters that have a gradient, and the L2 norm of each gradient.

        The result is kept for this step's :meth:`norms`, so a caller that needs the norms
        before the update (the autopilot) does not make the Monitor read the gradients twice.
        """
        index, grads = self.gradients()
        self._grad_cache = (index, self._global(self.groups_for(index).norms(grads), index))
        return self._grad_cache

    def groups_for(self, index: list[int]) -> TensorGroups:
        """The groups of the parameters ``index`` (all of them: built once)."""
        if len(index) == len(self.params):
            return self.groups
        if self._subset is None or self._subset[0] != index:
            subset = [self._detached[i] for i in index]
            self._subset = (index, TensorGroups(subset, self._detached[0].device))
        return self._subset[1]

    def weights(self, index: list[int]) -> list[torch.Tensor]:
        """The weights of the parameters ``index`` (this process's shards under FSDP2)."""
        return (
            self._detached if len(index) == len(self.params) else [self._detached[i] for i in index]
        )

    def gradients_since_last_look(self) -> bool | None:
        """Whether the gradients changed since the previous call (a backward pass ran, or they
        were cleared); None when there is no gradient to tell by. Cheap: it looks at one small
        parameter's gradient object and its version counter."""
        if self._probe is None:
            with_grad = [i for i, p in enumerate(self.params) if p.grad is not None]
            if not with_grad:
                return None
            self._probe = min(with_grad, key=lambda i: self.params[i].numel())
        grad = self.params[self._probe].grad
        changed = self.gradients_changed()
        self._probe_seen = None if grad is None else (weakref.ref(grad), grad._version)
        return changed

    def gradients_changed(self) -> bool | None:
        """What :meth:`gradients_since_last_look` would say now, without looking (the next
        call still compares with the previous look)."""
        if self._probe is None:
            return None
        grad, seen = self.params[self._probe].grad, self._probe_seen
        if grad is None:
            return None
        return seen is None or seen[0]() is not grad or seen[1] != grad._version

    def has_no_gradients(self) -> bool:
        """No parameter has a gradient, and none was measured earlier in this step."""
        return self._grad_cache is None and all(p.grad is None for p in self.params)

    def scale_cached_grad_norms(self, factor: float | torch.Tensor) -> None:
        """The gradients were all multiplied by ``factor`` (clipping): so are their norms."""
        if self._grad_cache is not None:
            index, norms = self._grad_cache
            self._grad_cache = (index, norms * factor)

    def forget_cached_grad_norms(self) -> None:
        self._grad_cache = None

    def has_cached_grad_norms(self) -> bool:
        return self._grad_cache is not None

    def scale_gradients(self, index: list[int], factor: float | torch.Tensor) -> None:
        """Multiply the gradients of ``index`` by ``factor`` (and their cached norms)."""
        torch._foreach_mul_([local_shard(self.params[i].grad) for i in index], factor)
        self.scale_cached_grad_norms(factor)

    def changed_in(self, model: nn.Module) -> tuple[list[str], int]:
        """The watched tensors that are no longer ``model``'s parameters (a module assigned in
        place of one after attach: ``model.head = nn.Linear(...)``), and how many of its
        trainable parameters are not watched (such a module's, or a layer unfrozen after
        attach). One pass over the model's parameters.

        Example:
            >>> stats = ParameterStats(nn.Linear(2, 2))
            >>> stats.changed_in(nn.Linear(2, 2))
            (['weight', 'bias'], 2)
        """
        now = {id(p): p for p in model.parameters()}
        watched = {id(p) for p in self.params}
        left = [n for n, p in self.named if id(p) not in now]
        added = sum(1 for i, p in now.items() if i not in watched and p.requires_grad)
        return left, added

    def follow_replaced_data(self) -> None:
        """Measure the weights a loop put in place of a parameter's own (``p.data =
        torch.renorm(p.data, ...)``, ``p.data = p.data.clamp(...)``): the parameter then holds
        new storage, and the alias made of it at attach would go on reading the old, frozen
        values. One pointer comparison a tensor; checked before each step's measurement."""
        if self._sharded:
            return  # FSDP2 keeps its shards' storage; their local views are taken as they are
        params, detached = self.params, self._detached
        moved = [i for i, p in enumerate(params) if p.data_ptr() != detached[i].data_ptr()]
        if not moved:
            return
        for i in moved:
            detached[i] = params[i].detach()
        self.groups = TensorGroups(detached)
        self._subset = None
        if self._snapshot is not None and any(
            detached[i].shape != self._snapshot_shapes[i] for i in moved
        ):
            self._snapshot = None  # a tensor of another shape: no update to measure this time

    def norms(self) -> tuple[list[int], torch.Tensor]:
        """Indices of the parameters that have a gradient, and one vector holding the L2 norm
        of each of those gradients followed by the norm of every parameter (one kernel call,
        or only the weights' when this step's gradient norms were already measured)."""
        self.follow_replaced_data()
        every = self._every
        weights = self.groups.norms(self._detached)
        if self._grad_cache is not None:
            (index, grad_norms), self._grad_cache = self._grad_cache, None
            return index, torch.cat([grad_norms, self._global(weights, every)])
        index, grads = self.gradients()
        both = torch.cat([self.groups_for(index).norms(grads), weights])
        return index, self._global(both, index + every)

    def _global(self, norms: torch.Tensor, index: list[int]) -> torch.Tensor:
        return norms if self.shards is None else self.shards.norms(norms, index)

    def gradients(self, dense: bool = False) -> tuple[list[int], list[torch.Tensor]]:
        """Indices of the parameters that have a gradient, and those gradients: a sparse one
        (``nn.Embedding(sparse=True)``) as :func:`readable` makes it (``dense``: as a dense
        tensor, for products with the weights' shape)."""
        grads = [p.grad for p in self.params]
        index = [i for i, g in enumerate(grads) if g is not None]
        if len(index) == len(grads):
            index = self._every
        else:
            grads = [grads[i] for i in index]
        if self._sharded:
            grads = [local_shard(g) for g in grads]
        if any(g.is_sparse for g in grads):
            grads = [readable(g, dense) for g in grads]
        return index, grads

    def param_norms(self) -> torch.Tensor:
        return self.groups.norms(self._detached)

    def nonfinite_counts(self, index: list[int]) -> list[int]:
        """Number of NaN/Inf entries in the gradients of ``index`` (run on unhealthy steps only).
        A gradient set to None since it was measured (``zero_grad`` before ``mon.step``) has no
        entries left to count: 0 here, and its norm tells the rest (see ``finish``)."""
        grads = [self.params[i].grad for i in index]
        # an empty stand-in on the weights' device: the counts are stacked into one tensor
        grads = [
            self._detached[i].new_zeros(0) if g is None else readable(local_shard(g))
            for i, g in zip(index, grads, strict=True)
        ]
        return self._counts(grads, index)

    def nonfinite_param_counts(self, index: list[int]) -> list[int]:
        """Number of NaN/Inf entries in the weights of ``index`` (unhealthy steps only)."""
        return self._counts(self._detached, index, pick=True)

    def _counts(self, tensors: list[torch.Tensor], index: list[int], pick: bool = False):
        if pick:
            tensors = [tensors[i] for i in index]
        counts = torch.stack([(~torch.isfinite(t)).sum() for t in tensors]).double()
        if self.shards is not None:
            counts = self.shards.counts(counts, index)
        return [int(c) for c in counts.tolist()]

    # -- updates ---------------------------------------------------------------------------------
    def take_snapshot(self) -> None:
        """Copy the weights now, to measure the next optimizer update against them."""
        self.follow_replaced_data()
        with torch.no_grad():
            self._snapshot = self.groups.copy(self._detached)
        self._snapshot_shapes = [t.shape for t in self._detached]

    def discard_snapshot(self) -> None:
        """Forget the snapshot (the weights were replaced, e.g. by a rollback)."""
        self._snapshot = None

    @property
    def has_snapshot(self) -> bool:
        return self._snapshot is not None

    def update_ratios(self) -> torch.Tensor:
        """||w_now - w_snapshot|| / ||w_snapshot|| per parameter; consumes the snapshot."""
        assert self._snapshot is not None
        before = self._snapshot
        self._snapshot = None
        with torch.no_grad():
            groups = self.groups
            before_norms = groups.norms_of(before)
            groups.subtract_(before, self._detached)
            every = self._every
            both = self._global(torch.cat([groups.norms_of(before), before_norms]), every + every)
            return both[: len(every)] / both[len(every) :]

    # -- the order of the backward pass ---------------------------------------------------------
    def trace_backward_order(self) -> list[torch.utils.hooks.RemovableHandle]:
        """Hooks that note the order in which gradients arrive in one backward pass."""
        order: list[int] = []
        self.backward_order = order

        def noter(i: int):
            def hook(_: torch.Tensor) -> None:
                order.append(i)

            return hook

        return [
            p.register_post_accumulate_grad_hook(noter(i))
            for i, p in enumerate(self.params)
            if p.requires_grad
        ]

    def first_in_backward(self, candidates: list[int]) -> int:
        """The candidate whose gradient the backward pass computed first."""
        rank = {i: r for r, i in enumerate(self.backward_order or [])}
        return min(candidates, key=lambda i: rank.get(i, len(rank) + i))


class Shards(Protocol):
    """Combines per-shard values over the processes of an FSDP2 job (the Reducer does)."""

    def norms(self, norms: torch.Tensor, index: list[int]) -> torch.Tensor:
        """Each parameter's norm from the norms of its shards (``index``: which parameter)."""

    def counts(self, counts: torch.Tensor, index: list[int]) -> torch.Tensor:
        """Each parameter's count from the counts in its shards."""


def _root_sum_of_squares(values: np.ndarray) -> float:
    """The global norm from per-tensor norms (NaN or inf when one of them is)."""
    return math.sqrt(float(np.dot(values, values)))


def _tensors_held(optimizer: torch.optim.Optimizer) -> int:
    return sum(len(group["params"]) for group in optimizer.param_groups)


def readable(grad: torch.Tensor, dense: bool = False) -> torch.Tensor:
    """A sparse gradient as the reductions take it: the values of its coalesced form (the
    same norm and the same non-finite entries as the dense tensor; coalescing sums the
    entries a row got twice), or dense where it must line up with its weight (``dense``; and
    a tensor small enough to be stacked with others of its shape, see ``TensorGroups``). A
    dense gradient as it is."""
    if not grad.is_sparse:
        return grad
    if dense or grad.numel() <= STACK_MAX_NUMEL:
        return grad.to_dense()
    return grad.coalesce().values()


def local_shard(t: torch.Tensor) -> torch.Tensor:
    """This process's part of a tensor: the local shard of a DTensor (FSDP2), else itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


class ParameterSignal(Signal):
    """The built-in parameter statistics: every recorded step, the gradient and weight norm of
    each trainable parameter (and globally); every ``update_every`` steps the update-to-weight
    ratio of the optimizer step; on unhealthy steps only, the number of non-finite entries and
    the parameter whose gradient the backward pass made non-finite first.

    Example:
        >>> # built in: Monitor(model, optimizer, update_every=10) records these
    """

    metrics = (GRAD_NORM, PARAM_NORM, UPDATE_RATIO, NONFINITE_GRADS, NONFINITE_PARAMS)

    def __init__(self, update_every: int = 10) -> None:
        super().__init__(every=1)
        self.update_every = positive_int("update_every", update_every)
        self.stats: ParameterStats | None = None
        self._index: list[int] = []
        self._grad_members: tuple[list[int], Members] | None = None
        self._hooks: list[Any] = []
        self._first_meta: dict[str, Any] = {}
        self.strays: StrayGradients | None = None  # set on attach, as ``stats`` is
        self._held = 0  # tensors the optimizer held when last looked (see measure)
        self.zeroed_early = False  # the loop zeroes the gradients before mon.step

    def attach(self, monitor: Any) -> None:
        super().attach(monitor)
        # raises for a model without parameters
        self.stats = ParameterStats(monitor.model, getattr(monitor, "optimizer", None))
        self._hooks = self.stats.trace_backward_order()
        # said once, on the first record
        optimizer = getattr(monitor, "optimizer", None)
        self._first_meta = {
            OPTIMIZER_FAMILY: "unknown" if optimizer is None else optimizer_family(optimizer)
        }
        frozen = [n for n, p in self.stats.named if not p.requires_grad]
        if frozen:
            self._first_meta[FROZEN_AT_ATTACH] = frozen
        self.strays = StrayGradients(monitor.model, self.stats.params)
        if optimizer is not None:
            self._held = _tensors_held(optimizer)

    def begin(self, step: int) -> None:
        if step % self.update_every == 0:
            self.stats.take_snapshot()

    def _follow_the_optimizer(self) -> None:
        """Parameters the optimizer took on since attach (``add_param_group``: a layer unfrozen
        at a later stage of fine-tuning) are measured from this step on. Looked for when the
        number of tensors the optimizer holds changed: a sum over its groups, per step. Not
        under torch.distributed, whose per-rank views map the parameters attach saw."""
        optimizer = getattr(self.monitor, "optimizer", None)
        if optimizer is None:
            return
        held = _tensors_held(optimizer)
        if held == self._held:
            return
        self._held = held
        measured = {id(p) for p in self.stats.params}
        if all(id(p) in measured for g in optimizer.param_groups for p in g["params"]):
            return
        if getattr(self.monitor, "reducer", None) is not None:
            warnings.warn(
                "steadygrad: the optimizer took on parameters after the Monitor was attached; "
                "under torch.distributed they are not measured (attach after the last "
                "add_param_group)",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        self.detach()  # the backward order is traced again over the new set
        self.stats = ParameterStats(self.monitor.model, optimizer)
        self._hooks = self.stats.trace_backward_order()
        self._grad_members = None
        self.strays = StrayGradients(self.monitor.model, self.stats.params)

    def before_update(self) -> None:
        """In a loop found calling ``zero_grad`` before ``mon.step``: the gradients the update
        is about to apply, measured now (kept for this step's record, so read once), as they
        are gone by the record (set 75's NODE net lost the one gradient that mattered). Other
        loops read them with the weights, in one pass, at the record."""
        monitor = self.monitor
        if (
            self.zeroed_early
            and monitor.step_count % monitor.every == 0
            and not self.stats.has_cached_grad_norms()
        ):
            self.stats.grad_norms()

    def measure(self, step: int, out: Measurements) -> None:
        self._follow_the_optimizer()
        stats = self.stats
        index, norms = stats.norms()
        self._index = index
        grads = stats.members[GRAD_NORM.name]
        if len(index) != len(grads):
            if self._grad_members is None or self._grad_members[0] != index:
                self._grad_members = (index, grads.subset(index))
            grads = self._grad_members[1]
        out.put_family(grads, norms[: len(index)])
        out.put_family(stats.members[PARAM_NORM.name], norms[len(index) :])
        if stats.has_snapshot:
            out.put_family(stats.members[UPDATE_RATIO.name], stats.update_ratios())

    def finishes_late(self, step: int, begins_next: bool) -> bool:
        return True  # the norms measure() put; live counts only where a norm is not finite

    def finish(self, record: Record, raw: Sequence[float]) -> None:
        stats, values, meta = self.stats, record.values, record.meta
        index = self._index
        infinite_grads: list[int] = []
        grads = None
        if index:
            _, grads = record.family_array(GRAD_NORM.name)
            values[GRAD_NORM.name] = _root_sum_of_squares(grads)
            infinite_grads = [index[k] for k in np.flatnonzero(~np.isfinite(grads)).tolist()]
        _, weights = record.family_array(PARAM_NORM.name)
        values[PARAM_NORM.name] = _root_sum_of_squares(weights)
        infinite_params = np.flatnonzero(~np.isfinite(weights)).tolist()
        # Unhealthy steps only: count the bad values and find where they were born. A norm can
        # overflow float32 while every entry is finite (entries of 1e20): that tensor is huge,
        # not non-finite, and its infinite norm stands as the spike it is.
        late = bool(meta.get(FINISHED_LATE))  # the tensors hold the next step's values now
        bad_grads = _with_bad_entries(infinite_grads, stats.nonfinite_counts, late)
        if index:  # a NaN norm has a NaN entry, counted or not (its gradient may be gone)
            for k in np.flatnonzero(np.isnan(grads)).tolist():
                bad_grads[index[k]] = bad_grads.get(index[k]) or 1
        bad_params = _with_bad_entries(infinite_params, stats.nonfinite_param_counts, late)
        values[NONFINITE_GRADS.name] = float(sum(bad_grads.values()))
        values[NONFINITE_PARAMS.name] = float(sum(bad_params.values()))
        if bad_grads and math.isfinite(values.get(LOSS.name, 0.0)):
            first = stats.first_in_backward(list(bad_grads))
            meta["backward_origin"] = {
                "parameter": stats.names[first],
                "grad_norm": float(grads[index.index(first)]),
            }
        if bad_params:
            meta["nonfinite_parameters"] = [stats.names[i] for i in bad_params]
        if bad_grads or bad_params or not math.isfinite(values.get(LOSS.name, 0.0)):
            meta["nonfinite"] = True  # what else this step measured is NaN-driven
        if self._first_meta:
            meta.update(self._first_meta)
            self._first_meta = {}
        stray = self.strays.check()
        if stray:
            meta[GRADIENTS_NOT_APPLIED] = stray
        if self._hooks and stats.backward_order:
            self.detach()  # the order of one backward pass is all it needs

    def detach(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


class StrayGradients:
    """Parameters frozen and outside the optimizer at attach (not measured) that later receive
    gradients while nothing ever changes them: a layer unfrozen (``requires_grad_(True)``)
    after the optimizer was built without it, so it gets gradients and is never trained.

    Read without touching the tensors' values: whether a gradient is there, and the tensor's
    version counter, which every in-place update (an optimizer's step) advances. A parameter
    another optimizer trains (a GAN's discriminator, frozen at attach) moves, and is left out.

    Example:
        >>> model = nn.Linear(2, 1)
        >>> _ = model.bias.requires_grad_(False)
        >>> strays = StrayGradients(model, [model.weight], records=2)
        >>> _ = model.bias.requires_grad_(True)
        >>> found = []
        >>> for _ in range(3):
        ...     model(torch.ones(1, 2)).sum().backward()
        ...     found += strays.check()
        >>> found
        ['bias']
    """

    def __init__(self, model: nn.Module, measured: list[torch.Tensor], records: int = 5) -> None:
        tracked = {id(p) for p in measured}
        self._watched = [(n, p) for n, p in model.named_parameters() if id(p) not in tracked]
        self.records = records
        self._seen: dict[str, tuple[int, int]] = {}  # name -> (version at first gradient, records)
        # name -> its gradient last looked at (weakly: a freed one was replaced) and version
        self._grads: dict[str, tuple[weakref.ref, int]] = {}
        self._told: set[str] = set()

    def check(self) -> list[str]:
        """The parameters newly found to get gradients that are never applied."""
        found = []
        for name, p in self._watched:
            # a parameter that requires no gradient gets none from a backward pass: a gradient
            # left over from before the freeze, rescaled in place by a clip over every
            # parameter, changes without being one
            if p.grad is None or not p.requires_grad or name in self._told:
                continue
            last = self._grads.get(name)
            self._grads[name] = (weakref.ref(p.grad), p.grad._version)
            if last is None or (last[0]() is p.grad and last[1] == p.grad._version):
                # no new gradient since the last look (or none seen before): a gradient left
                # over from before the freeze (a pre-training loop's) is no gradient it gets
                continue
            version, records = self._seen.get(name, (p._version, 0))
            if p._version != version:  # something updates it: not a stray
                self._told.add(name)
                continue
            self._seen[name] = (version, records + 1)
            if records + 1 >= self.records:
                self._told.add(name)
                found.append(name)
        return found


def _with_bad_entries(
    index: list[int], count: Callable[[list[int]], list[int]], late: bool = False
) -> dict[int, int]:
    """Of the tensors ``index`` whose norm is not finite, those with NaN/Inf entries, and how
    many each has (counted only when some norm is not finite: unhealthy steps). Counted
    ``late`` (the tensors moved on a step), a tensor with none left is taken to have had one:
    a norm past float32 with every entry finite is rare beside a NaN that was since zeroed."""
    if not index:
        return {}
    counts = count(index)
    if late:
        counts = [max(n, 1) for n in counts]
    return {i: n for i, n in zip(index, counts, strict=True) if n}
