"""The Monitor under torch.distributed (DDP, FSDP2): values reduced over ranks, one writer.

The :class:`Reducer` is a built-in signal the Monitor adds when a process group of more than
one process is up. At the Monitor's one transfer it reduces the step's values in one collective,
a SUM over one concatenated vector (a maximum, such as the slowest rank's step time, travels as
one slot per rank and is taken on the host, so no second operator is needed):

* ``loss`` is the mean over ranks; ``step_time`` the slowest rank's; activation and input RMS the
  root mean square over ranks; every other value is rank 0's, sent to all, so every rank holds
  the same Record.
* gradient and weight norms are of the tensors actually applied: after DDP's all-reduce every
  rank holds the same gradients, so they need nothing; under FSDP2 each rank holds shards, and
  :class:`~steadygrad.monitor.parameters.ParameterStats` asks :meth:`Reducer.norms` for the
  root of the sum of squares over ranks (one more collective, which also makes the autopilot's
  skip decision the same on every rank; the weight norms, update ratios and the update-curvature
  slopes likewise, one small collective each).
* per-rank families: ``loss/<rank>``, ``nonfinite_grads/<rank>`` and ``grad_norm_local/<rank>``,
  the last two read before the all-reduce by a DDP communication hook (FSDP2's reduce-scatter
  has no such hook: there the per-rank loss is what names the rank).

Every rank gets the same reduced Record, so the detectors and the autopilot reach the same
decision on every rank without talking further. Only rank 0 writes the run store and the sinks.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from steadygrad.core import Measurements, Record, Signal
from steadygrad.core.metrics import GRAD_NORM_LOCAL, INPUT_RMS, LOSS, NONFINITE_GRADS, STEP_TIME

ROOT, SUM, MEAN, RMS = range(4)  # how a value is reduced over ranks (ROOT: rank 0's)


class Reducer(Signal):
    """Reduces a step's values over the ranks of a torch.distributed job (see the module doc).

    The Monitor creates it by itself (``Reducer.for_process()``); nothing to pass.

    Example:
        >>> Reducer.for_process() is None   # no process group in this process
        True
    """

    metrics = (GRAD_NORM_LOCAL,)

    def __init__(self, group: Any = None) -> None:
        super().__init__(every=1)
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        backend = dist.get_backend(group)
        self.device = (
            torch.device("cuda", torch.cuda.current_device())
            if backend == "nccl"
            else torch.device("cpu")
        )
        self.collectives = 0  # collectives issued so far, and their payload in bytes
        self.bytes = 0
        self._names: list[str] = []
        self._sharded: torch.Tensor | None = None
        self._local: list[tuple[list[int], torch.Tensor, torch.Tensor]] = []
        self._local_step = -1
        self._hooked = False
        self._plan_key: tuple | None = None
        self._plan: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._last_wall = time.perf_counter()

    @classmethod
    def for_process(cls) -> Reducer | None:
        """A Reducer when this process is one of several in a torch.distributed job, else None."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return None
        return cls()

    @property
    def writes(self) -> bool:
        """Whether this process writes the run (rank 0 only)."""
        return self.rank == 0

    # -- wiring ------------------------------------------------------------------------------------
    def attach(self, monitor: Any) -> None:
        super().attach(monitor)
        stats = monitor.parameters.stats
        self._names = stats.names
        sharded = [_is_sharded(p) for p in stats.params]
        if any(sharded):  # FSDP2: norms of shards must be combined over ranks
            self._sharded = torch.tensor(sharded, device=self.device)
            stats.shards = self
        self._hook_ddp(monitor.model)

    def _hook_ddp(self, model: torch.nn.Module) -> None:
        """See each rank's own gradients in DDP's buckets, just before the all-reduce."""
        if not isinstance(model, torch.nn.parallel.DistributedDataParallel):
            return
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        index = {id(p): i for i, p in enumerate(self.monitor.parameters.stats.params)}

        # No annotations: DDP checks them, and this module's are strings (future import).
        def hook(process_group, bucket):  # noqa: ANN001, ANN202
            if self.monitor is None:  # closed: DDP keeps the hook, which only passes on
                return allreduce_hook(process_group, bucket)
            try:
                if self._local_step != self.monitor.step_count:
                    self._local, self._local_step = [], self.monitor.step_count
                grads = bucket.gradients()
                norms = torch.stack(torch._foreach_norm(grads)).to(torch.float64)
                bad = (~torch.isfinite(bucket.buffer())).sum().to(torch.float64)
                params = [index.get(id(p), -1) for p in bucket.parameters()]
                self._local.append((params, norms, bad))
            except Exception as exc:  # never harm the run: the averaged values still hold
                warnings.warn(f"steadygrad: local gradient view failed ({exc!r})", stacklevel=1)
            return allreduce_hook(process_group, bucket)

        try:
            model.register_comm_hook(self.group, hook)
            self._hooked = True
        except Exception as exc:  # e.g. the user registered a hook of their own
            warnings.warn(
                f"steadygrad: no per-rank gradient norms under DDP ({exc}); the averaged "
                "values are recorded as usual",
                RuntimeWarning,
                stacklevel=3,
            )

    def detach(self) -> None:
        if self.monitor is None:
            return
        stats = self.monitor.parameters.stats
        if stats.shards is self:
            stats.shards = None
        self.monitor = None

    # -- FSDP2: norms of shards ---------------------------------------------------------------
    def norms(self, norms: torch.Tensor, index: list[int]) -> torch.Tensor:
        """The norm of each whole tensor from each rank's norm of its shard: the root of the
        sum of squares over ranks (replicated tensors keep their norm). One collective."""
        squares = self.counts(norms.to(self.device, torch.float64).square(), index)
        return squares.sqrt().to(norms.device, norms.dtype)

    def counts(self, counts: torch.Tensor, index: list[int]) -> torch.Tensor:
        """Sums over ranks of per-shard values (a replicated tensor's value is kept)."""
        values = counts.to(self.device, torch.float64)
        sharded = self._sharded[torch.as_tensor(index, device=self.device, dtype=torch.long)]
        values = torch.where(sharded, values, values / self.world)
        self._all_reduce(values, dist.ReduceOp.SUM)
        return values.to(counts.device)

    # -- per-rank values -------------------------------------------------------------------------
    def measure(self, step: int, out: Measurements) -> None:
        """This rank's own values in its slot of each per-rank family (zeros elsewhere: the
        SUM fills in every rank's)."""
        loss = self.monitor.inputs.loss.detach().reshape(()).to(self.device, torch.float64)
        local = torch.zeros(6, self.world, dtype=torch.float64, device=self.device)
        local[0, self.rank] = loss
        now = time.perf_counter()
        local[4, self.rank], self._last_wall = now - self._last_wall, now
        if self._hooked and self._local and self._local_step == self.monitor.step_count:
            norms = torch.cat([n.to(self.device) for _, n, _ in self._local])
            local[1, self.rank] = norms.square().sum().sqrt()
            local[2, self.rank] = sum(b.to(self.device) for _, _, b in self._local)
            # The first parameter, in the order DDP's buckets became ready (the order of the
            # backward pass), whose own gradient was non-finite here: 1 + its index, 0 if none.
            params = torch.tensor(
                [i for p, _, _ in self._local for i in p], dtype=torch.float64, device=self.device
            )
            bad = ~torch.isfinite(norms)
            first = torch.argmax(bad.to(torch.int8))
            local[3, self.rank] = torch.where(bad.any(), params[first] + 1, 0.0)
            # The parameter with the largest gradient here, to name where a spike is.
            largest = torch.argmax(torch.where(bad, -1.0, norms))
            local[5, self.rank] = params[largest] + 1
        self._local = []
        ranks = range(self.world)
        out.put_many([LOSS.key(r) for r in ranks], local[0])
        if self._hooked:
            out.put_many([GRAD_NORM_LOCAL.key(r) for r in ranks], local[1])
            out.put_many([NONFINITE_GRADS.key(r) for r in ranks], local[2])
        out.stash(self, local[3:].reshape(-1))  # origin, step time, largest gradient

    def finishes_late(self, step: int, begins_next: bool) -> bool:
        return True  # finish reads the reduced values alone

    def finish(self, record: Record, raw: Sequence[float]) -> None:
        """The step time of the slowest rank; name the rank (and, under DDP, the parameter)
        where a non-finite value was born."""
        values, meta = record.values, record.meta
        w = self.world
        origin, step_times, largest = raw[:w], raw[w : 2 * w], raw[2 * w :]
        values[STEP_TIME.name] = max(step_times)  # the slowest rank sets the pace
        if any(largest):
            meta["largest_local_grad"] = {
                r: self._names[int(i) - 1] for r, i in enumerate(largest) if i > 0
            }
        bad_ranks = [
            r
            for r in range(self.world)
            if not math.isfinite(values.get(LOSS.key(r), 0.0))
            or values.get(NONFINITE_GRADS.key(r), 0.0) > 0
        ]
        if not bad_ranks:
            return
        meta["nonfinite_ranks"] = bad_ranks
        origins = [(r, int(origin[r]) - 1) for r in bad_ranks if origin[r] > 0]
        if origins:
            rank, i = origins[0]
            name = self._names[i]
            meta["backward_origin"] = {
                "rank": rank,
                "parameter": name,
                "module": name.rpartition(".")[0],
                "grad_norm_local": values.get(GRAD_NORM_LOCAL.key(rank)),
            }
        for key in ("backward_origin", "forward_origin"):
            if key in meta:
                meta[key].setdefault("rank", bad_ranks[0])

    # -- the Monitor's one transfer ------------------------------------------------------------
    def reduce(self, labels: list[Any], vector: torch.Tensor) -> torch.Tensor:
        """The step's values reduced over ranks: one SUM over the concatenated vector."""
        local = vector.to(self.device)
        squared, divide, root = self._plan_for(labels)
        part = torch.where(squared, local.square(), local)
        if self.rank != 0:
            part = torch.where(root, torch.zeros_like(part), part)
        self._all_reduce(part, dist.ReduceOp.SUM)
        part = torch.where(divide, part / self.world, part)
        return torch.where(squared, part.sqrt(), part).to(vector.device)

    def _plan_for(self, labels: list[Any]) -> tuple[torch.Tensor, ...]:
        """How each entry is reduced, as masks (kept while the labels stay the same)."""
        key = tuple(label if isinstance(label, str) else id(label) for label in labels)
        if key != self._plan_key:
            rules = [self._rule(label) for label in labels]

            def mask(kinds: tuple[int, ...]) -> torch.Tensor:
                return torch.tensor([r in kinds for r in rules], device=self.device)

            self._plan_key = key
            self._plan = (mask((RMS,)), mask((MEAN, RMS)), mask((ROOT,)))
        return self._plan

    def _rule(self, label: Any) -> int:
        if label is self:
            return SUM
        if not isinstance(label, str):  # stashed values: activation norms are per batch
            from steadygrad.monitor.activations import ActivationSignal

            return RMS if isinstance(label, ActivationSignal) else ROOT
        family, _, where = label.partition("/")
        if label == LOSS.name:
            return MEAN
        if label == INPUT_RMS.name:
            return RMS  # each rank's own batch: one mis-scaled on any rank shows
        if where and family in (LOSS.name, NONFINITE_GRADS.name, GRAD_NORM_LOCAL.name):
            return SUM  # per-rank slots
        # Norms of the applied gradients and weights are already global, learning rates the
        # same everywhere; anything else is taken from rank 0. Every rank then holds the same
        # Record, so the detectors and the autopilot decide alike on every rank.
        return ROOT

    def _all_reduce(self, tensor: torch.Tensor, op: Any) -> None:
        dist.all_reduce(tensor, op=op, group=self.group)
        self.collectives += 1
        self.bytes += tensor.numel() * tensor.element_size()


class NullStore:
    """What a rank that does not write the run holds in place of the run store: every write
    is accepted and dropped (any method the store has, so the two cannot drift apart)."""

    def __init__(self, run_dir: str | Path, name: str | None = None, *args: Any, **kw: Any):
        self.run_dir = Path(run_dir)
        self.name = name or self.run_dir.name
        self.path = self.run_dir / "run.db"

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("_"):
            raise AttributeError(attribute)
        return _drop


def _drop(*args: Any, **kwargs: Any) -> None:
    """A write on a rank that does not write."""


def _is_sharded(p: torch.Tensor) -> bool:
    """A DTensor parameter split across ranks (FSDP2's ``fully_shard``)."""
    placements = getattr(p, "placements", None)
    return bool(placements) and any(getattr(pl, "is_shard", lambda: False)() for pl in placements)
