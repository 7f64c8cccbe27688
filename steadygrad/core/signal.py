"""Extension point for measurements: a Signal is anything the Monitor asks for values on a cadence.

Every measurement is a Signal, the built-in ones too (loss, learning rates, parameter
statistics, activations, ...). A signal declares the metrics it writes (:attr:`Signal.metrics`)
so the store, the detectors and the report know them.

Lifecycle, driven by the Monitor:
  ``attach(monitor)`` once; ``begin(step)`` before the forward pass of every step where
  ``due(step)`` (install hooks here); ``before_update()`` in the optimizer's pre-step path of
  every step (read what the update is about to use); ``after_update()`` right after it;
  ``end(step)`` after the step, for every due
  signal before any of them collects (remove hooks here, so a probe that runs its own forward
  passes is not captured by another signal); ``measure(step, out)`` puts this step's values
  (tensors may stay on the device: the Monitor moves all of a step's values to the host in one
  transfer); ``finish(record, raw)`` then derives values and facts on the host from the whole
  Record; ``detach()`` at close. On a GPU the Monitor runs ``finish`` at the next
  ``mon.step`` call when every due signal's ``finishes_late(step, begins_next)`` agrees.

A simple signal only overrides :meth:`Signal.collect`, which returns ``{name: tensor or float}``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from steadygrad.core.checks import positive_int
from steadygrad.core.metric import Metric
from steadygrad.core.record import Family, Members, Values

if TYPE_CHECKING:
    from steadygrad.core.record import Record

Value = torch.Tensor | float
# (labels, float64 vector) -> the vector reduced over processes; see Measurements.to_host.
Reduce = Callable[[list[Any], torch.Tensor], torch.Tensor]


class Measurements:
    """A step's values as the signals put them, moved to the host in one transfer.

    Example:
        >>> out = Measurements()
        >>> out.put("loss", torch.tensor(2.5))
        >>> out.put_many(["a", "b"], torch.tensor([1.0, 2.0]))
        >>> out.put("lr/0", 0.1)
        >>> out.put_family(Members("grad_norm", ["fc.weight"]), torch.tensor([3.0]))
        >>> out.to_host()
        {'loss': 2.5, 'a': 1.0, 'b': 2.0, 'lr/0': 0.1, 'grad_norm/fc.weight': 3.0}
    """

    def __init__(self) -> None:
        self._keys: list[Sequence[str] | Members] = []
        self._tensors: list[torch.Tensor] = []
        self._host: dict[str, float] = {}
        self._raw: dict[int, torch.Tensor] = {}
        self._raw_host: dict[int, list[float]] = {}
        self._owners: dict[int, object] = {}
        self._sent: tuple[torch.Tensor, Any] | None = None  # what send() started moving

    def put(self, key: str, value: Value) -> None:
        """One value: a one-element tensor (left on its device) or a host number."""
        if isinstance(value, torch.Tensor):
            self._keys.append((key,))
            self._tensors.append(value.detach().reshape(1))
        else:
            self._host[key] = float(value)

    def put_many(self, keys: Sequence[str], values: torch.Tensor) -> None:
        """One value per key, as one 1-D tensor of ``len(keys)`` entries."""
        if values.numel() != len(keys):
            raise ValueError(f"put_many got {len(keys)} keys for {values.numel()} values")
        if len(keys):
            self._keys.append(keys)
            self._tensors.append(values.detach().reshape(-1))

    def put_family(self, members: Members, values: torch.Tensor) -> None:
        """A per-module family, one value per member as one 1-D tensor: it reaches the Record
        as one array (:class:`~steadygrad.core.record.Values`), with no key built per step."""
        if values.numel() != len(members):
            raise ValueError(f"put_family got {len(members)} members for {values.numel()} values")
        if len(members):
            self._keys.append(members)
            self._tensors.append(values.detach().reshape(-1))

    def stash(self, owner: object, values: torch.Tensor) -> None:
        """Values for ``owner``'s own use after the transfer (not recorded): see :meth:`raw`."""
        self._raw[id(owner)] = values.detach().reshape(-1)
        self._owners[id(owner)] = owner

    def raw(self, owner: object) -> list[float]:
        """What ``owner`` stashed, as host floats, once :meth:`to_host` has run."""
        return self._raw_host.get(id(owner), [])

    def to_host(self, reduce: Reduce | None = None) -> Values:
        """Every value on the host: one device-to-host transfer per device (one usually).

        Values travel in float64, so a loss of 1e-300 or 1e300 arrives as it is; families put
        with :meth:`put_family` arrive as float64 arrays. Under torch.distributed the Monitor
        passes ``reduce(labels, vector)``: it gets every value (host numbers too) as one float64
        vector with one label per entry (the key, or the owner of stashed values) and returns
        the vector reduced over the processes.
        """
        self.send(reduce)
        return self.receive()

    def send(self, reduce: Reduce | None = None, staging: Staging | None = None) -> None:
        """Start the transfer of :meth:`to_host` and return without waiting for it: from a GPU
        the values are copied into pinned host memory (``staging``'s, reused from step to step)
        behind the work queued before them, and :meth:`receive` waits only for that copy (the
        host goes on queueing the next step)."""
        tensors = self._tensors + list(self._raw.values())
        host = list(self._host.items())
        if reduce is not None and host:
            tensors = tensors + [torch.tensor([v for _, v in host], dtype=torch.float64)]
        self._sent = None
        if not tensors:
            return
        if len({t.device for t in tensors}) > 1:
            tensors = [t.cpu() for t in tensors]
        flat = torch.cat([t.to(torch.float64) for t in tensors])
        if reduce is not None:
            labels: list[Any] = [key for keys in self._keys for key in _keys(keys)]
            for owner, t in self._raw.items():
                labels += [self._owners[owner]] * t.numel()
            labels += [key for key, _ in host]
            flat = reduce(labels, flat)
        if flat.device.type != "cuda":
            self._sent = (flat, None)
            return
        pinned = (staging or Staging()).take(flat.numel())
        pinned.copy_(flat, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        self._sent = (pinned, done)

    def receive(self) -> Values:
        """The values :meth:`send` started moving, on the host (it waits for the copy)."""
        values = Values()
        scalars = values.scalars
        sent, self._sent = self._sent, None
        if sent is not None:
            flat_tensor, done = sent
            if done is not None:
                done.synchronize()
            flat = flat_tensor.cpu().numpy()  # the transfer (from a GPU: already made)
            if done is not None:
                flat = flat.copy()  # the staging memory takes the next step's values
            k = 0
            for keys in self._keys:
                n = len(keys)
                if isinstance(keys, Members) and keys.signal not in values.families:
                    values.families[keys.signal] = Family(keys, flat[k : k + n])
                else:
                    scalars.update(zip(_keys(keys), flat[k : k + n].tolist(), strict=True))
                k += n
            for owner, t in self._raw.items():
                self._raw_host[owner] = flat[k : k + t.numel()].tolist()
                k += t.numel()
            if k < len(flat):  # the host numbers, reduced over the processes
                scalars.update(zip(self._host, flat[k:].tolist(), strict=True))
                return values
        scalars.update(self._host)
        return values


class Staging:
    """Pinned host memory for one Monitor's transfers from a GPU, reused from step to step:
    allocating pinned memory synchronises the device, so it grows (doubling) only when a step
    sends more values than any before. One transfer at a time uses it: a step's values are
    received before the next step's are sent."""

    def __init__(self) -> None:
        self._memory: torch.Tensor | None = None

    def take(self, n: int) -> torch.Tensor:
        """``n`` float64 entries of pinned host memory."""
        size = 0 if self._memory is None else self._memory.numel()
        if n > size:
            self._memory = torch.empty(max(n, 2 * size), dtype=torch.float64, pin_memory=True)
        return self._memory[:n]


@contextmanager
def random_state_kept(model: torch.nn.Module) -> Iterator[None]:
    """Run a block that may draw random numbers (dropout in a re-run forward, a probe's loss)
    and put the global random state back afterwards, on the CPU and the model's GPUs, and
    NumPy's and Python's (a Hugging Face layer's LayerDrop draws from NumPy): the watched run
    then draws what it would have drawn unwatched.

    Example:
        >>> model = torch.nn.Dropout(0.5)
        >>> with random_state_kept(model):
        ...     _ = model(torch.ones(4))
    """
    gpus = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    host = host_random_state()
    try:
        with torch.random.fork_rng(devices=gpus):
            yield
    finally:
        set_host_random_state(host)


def host_random_state() -> tuple:
    """The CPU's global random states: torch's, NumPy's and Python's."""
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def set_host_random_state(state: tuple) -> None:
    """Put back states taken by :func:`host_random_state` (one left None stays as it is)."""
    cpu, numpy_state, python_state = state
    torch.set_rng_state(cpu)
    if numpy_state is not None:
        np.random.set_state(numpy_state)
    if python_state is not None:
        random.setstate(python_state)


def _keys(keys: Sequence[str] | Members) -> Sequence[str]:
    return keys.keys if isinstance(keys, Members) else keys


class Signal:
    """Base class for cadence-driven measurements.

    Subclasses declare the metrics they write in ``metrics`` and return values from
    :meth:`collect` (or, for many values at once, put them in :meth:`measure`).

    Example:
        >>> from steadygrad.core.metric import Metric
        >>> class WeightMax(Signal):
        ...     metrics = (Metric("weight_max", "largest absolute weight"),)
        ...     def collect(self, step):
        ...         return {"weight_max": max(p.abs().max() for p in self.monitor.model.parameters())}
        >>> # Monitor(model, optimizer, signals=[WeightMax(every=50)])
    """

    metrics: tuple[Metric, ...] = ()

    def __init__(self, every: int = 1) -> None:
        self.every = positive_int("every", every)
        self.monitor: Any = None

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def applies(self) -> bool | str:
        """True if the signal can measure the attached model; else a reason it stays off."""
        return True

    def attach(self, monitor: Any) -> None:
        self.monitor = monitor

    def begin(self, step: int) -> None:
        """Called before the forward pass of a step on which the signal is due."""

    def before_update(self) -> None:
        """Called in the optimizer's pre-step path of every step, before the update."""

    def after_update(self) -> None:
        """Called in the optimizer's post-step path of every step, right after the update."""

    def end(self, step: int) -> None:
        """Called after the step, before any signal collects: stop capturing."""

    def collect(self, step: int) -> Mapping[str, Value]:
        """Called after the step; returns this step's values."""
        return {}

    def measure(self, step: int, out: Measurements) -> None:
        """Put this step's values into ``out`` (by default, those :meth:`collect` returns)."""
        for name, value in self.collect(step).items():
            out.put(name, value)

    def finish(self, record: Record, raw: Sequence[float]) -> None:
        """After the transfer: derive host values and facts (``record.meta``) from the Record;
        ``raw`` holds what :meth:`measure` stashed (``out.stash(self, tensor)``) as floats."""

    def finishes_late(self, step: int, begins_next: bool) -> bool:
        """Whether :meth:`finish` of ``step`` may run at the next ``mon.step`` call, after the
        next step's :meth:`begin` (when ``begins_next``), forward pass and update: the Monitor
        defers a step (so a GPU is never made to wait) only when every due signal agrees.
        Safe when ``finish`` reads only its record, its raw values and what :meth:`measure`
        left: a signal that does not begin again next step, or one with no ``finish``. A
        signal whose ``finish`` reads only those may return True always."""
        return not begins_next or type(self).finish is Signal.finish

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must carry to resume this signal."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def detach(self) -> None:
        """Remove every hook this signal added."""
