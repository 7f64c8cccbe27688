"""Shared machinery for steadygrad's optimizers: argument checks, one update function per
algorithm run eagerly or compiled, 8-bit state storage, and a state_dict that keeps dtypes.

Each optimizer writes its math once, as a *kernel*: a function of one parameter tensor, its
gradient, its state tensors and a small float32 tensor ``hp`` of step-dependent scalars. The kernel
never mutates its inputs except through a final ``copy_`` into the parameter and the states, and
it never touches ``p.grad``. The eager path calls the kernel as is (a chain of torch ops, the
reference). The multi-tensor eager path (``_foreach``) calls the same kernel on lists of
tensors, through torch's ``_foreach_`` ops, block by block. The fast path calls ``torch.compile`` of the same kernel on flat views: inductor fuses
the chain into a single pass over memory, which is what makes an optimizer step memory-bound.
Scalars travel in ``hp`` (a tensor), so changing the learning rate or the step never recompiles;
shapes are dynamic, so one compiled variant serves every tensor size.
"""

from __future__ import annotations

import os
import time
import types
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from numbers import Integral
from typing import Any

import torch
from torch.optim import Optimizer

from steadygrad.core.checks import finite_float
from steadygrad.optim import _foreach, _quant8

Kernel = Callable[..., None]

# One compiled wrapper per kernel function, shared by all optimizer instances.
_COMPILED: dict[tuple[Kernel, int], Kernel] = {}
# None: not probed yet; True/False: whether torch.compile works on this machine.
_COMPILE_WORKS: bool | None = None
# Wall-clock seconds spent in calls that compiled a new variant, by kernel name.
COMPILE_SECONDS: dict[str, float] = {}


# Set to "1" to run as if torch.compile were unavailable (tests, benchmarks, or a machine whose
# compiler misbehaves): ``fused=None`` then takes the multi-tensor eager path.
NO_COMPILE_ENV = "STEADYGRAD_NO_COMPILE"


def compile_available() -> bool:
    """Whether ``torch.compile`` (inductor) can build and run a kernel here; probed once.

    False while the environment variable ``STEADYGRAD_NO_COMPILE`` is ``1``.
    """
    global _COMPILE_WORKS
    if os.environ.get(NO_COMPILE_ENV) == "1":
        return False
    if _COMPILE_WORKS is None:
        try:

            def probe(x: torch.Tensor) -> torch.Tensor:
                return x * 2.0 + 1.0

            out = torch.compile(probe, dynamic=True, fullgraph=True)(torch.ones(4))
            _COMPILE_WORKS = bool(torch.equal(out, torch.full((4,), 3.0)))
        except Exception as exc:  # any failure (no compiler, no inductor) means: run eager
            warnings.warn(
                f"torch.compile is unavailable ({type(exc).__name__}: {exc}); "
                "steadygrad optimizers fall back to the eager path",
                RuntimeWarning,
                stacklevel=2,
            )
            _COMPILE_WORKS = False
    return _COMPILE_WORKS


# Parameter entries (over every group) from which ``fused=None`` compiles. Compiling costs
# 5-20 s once; the single pass over memory it buys saves a few passes per step, a fraction of a
# millisecond below this size, which would take tens of thousands of steps to pay the
# compilation back: a smaller model runs the multi-tensor eager path, as torch's own do.
COMPILE_FROM = 2**20

# Tensors per compiled call: a dynamo call costs tens of microseconds of Python, which would
# dominate the update of a small tensor; a chunk of tensors shares one call. Larger chunks cut
# that overhead further but compile for longer (16: ~5-20 s once per optimizer, then cached).
CHUNK = 16


def _compiled_chunk(kernel: Kernel, size: int) -> Kernel:
    fn = _COMPILED.get((kernel, size))
    if fn is None:

        def chunk(args: list[list[torch.Tensor]], hps: torch.Tensor, flags: tuple) -> None:
            for i, tensors in enumerate(args):
                kernel(*tensors, hps[i], *flags)

        # A code object of its own per kernel: dynamo keeps its cache (and its recompile
        # limit) per code object, so the kernels must not share the closure's.
        code = chunk.__code__.replace(co_name=f"{kernel.__name__}_chunk{size}")
        chunk = types.FunctionType(code, chunk.__globals__, code.co_name, None, chunk.__closure__)
        fn = torch.compile(chunk, dynamic=True, fullgraph=True)
        _COMPILED[(kernel, size)] = fn
    return fn


class _NoDuckShapes:
    """Tensors of a chunk that happen to have equal sizes must not share a symbolic size (that
    would recompile whenever the coincidence breaks). Set and restored by hand: a config
    ``patch()`` costs more than the rest of a call."""

    def __enter__(self) -> None:
        from torch.fx.experimental import _config

        self.config, self.before = _config, _config.use_duck_shape
        _config.use_duck_shape = False

    def __exit__(self, *exc: object) -> None:
        self.config.use_duck_shape = self.before


_no_duck_shapes = _NoDuckShapes


def _flat_alias(t: torch.Tensor) -> torch.Tensor:
    """A 1-D tensor on the storage of contiguous ``t`` that is not a view (no ``_base``):
    dynamo guards on a view's base, whose rank differs between parameters."""
    flat = torch.empty(0, dtype=t.dtype, device=t.device)
    return flat.set_(t.untyped_storage(), t.storage_offset(), (t.numel(),), (1,))


_SCRATCH: dict[tuple[Any, ...], list[torch.Tensor]] = {}


def _scratch(like: list[torch.Tensor], slot: int, numel: int = 2) -> list[torch.Tensor]:
    """Throw-away tensors that pad slot ``slot`` of a chunk: ``numel`` entries each (one for
    one-entry states); distinct per slot, since aliased inputs would change the graph."""
    key = (slot, numel, *((t.dtype, t.device, t.numel() > 1) for t in like))
    pad = _SCRATCH.get(key)
    if pad is None:
        pad = [
            torch.zeros(numel if t.numel() > 1 else 1, dtype=t.dtype, device=t.device) for t in like
        ]
        _SCRATCH[key] = pad
    return pad


# Inductor's CPU code for a float32 sum switches to a more precise accumulator above this many
# entries and guards on it; kernels with such reductions (``kernel.float32_sum = True``) get
# chunks of one size class only, so that a chunk's guard pattern is one of two.
_SUM_SPLIT = 4096


def _size_classes(kernel: Kernel, items: list[Any]) -> list[tuple[int, list[Any]]]:
    """``(padding numel, items)`` per size class of ``items`` (one class unless needed)."""
    if not getattr(kernel, "float32_sum", False):
        return [(2, items)]
    small = [it for it in items if it[0][0].numel() <= _SUM_SPLIT]
    large = [it for it in items if it[0][0].numel() > _SUM_SPLIT]
    return [(n, group) for n, group in ((2, small), (_SUM_SPLIT + 1, large)) if group]


# ---------------------------------------------------------------- argument checks


def check_lr(value: object) -> float:
    return finite_float("lr", value, low=0.0)


def check_betas(value: object, count: int, name: str = "betas") -> tuple[float, ...]:
    if (
        not isinstance(value, Sequence)
        or isinstance(value, (str, bytes, bytearray))
        or len(value) != count
    ):
        raise TypeError(f"{name} must be a sequence of {count} floats, got {value!r}")
    return tuple(
        finite_float(f"{name}[{i}]", b, low=0.0, high=1.0, high_open=True)
        for i, b in enumerate(value)
    )


def check_non_negative(name: str, value: object) -> float:
    return finite_float(name, value, low=0.0)


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def check_fused(value: object) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"fused must be True, False or None, got {value!r}")
    return value


def check_foreach(value: object) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"foreach must be True, False or None, got {value!r}")
    return value


def check_state_bits(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"state_bits must be the int 8 or 32, got {type(value).__name__} {value!r}")
    if value not in (8, 32):
        raise ValueError(f"state_bits must be 8 or 32, got {value!r}")
    return int(value)


# ---------------------------------------------------------------- the base class


class KernelOptimizer(Optimizer):
    """Base class: subclasses define ``_state_names`` and ``_step_group``.

    ``fused=None`` (default) uses the compiled kernel when ``torch.compile`` works and the
    parameters, on the CPU, hold ``COMPILE_FROM`` (2**20) entries or more, and the eager kernel
    otherwise (on an accelerator the multi-tensor eager path is the faster one);
    ``fused=False`` always runs eagerly; ``fused=True`` asks for the compiled kernel and raises
    if it is unavailable. The eager kernel runs on lists of tensors
    (torch's ``_foreach_`` ops, cache-blocked; ``foreach=None`` or ``True``) or tensor by tensor
    (``foreach=False``: the reference loop). Both run the same kernel code.
    ``state_bits=8`` keeps moment states of tensors with >= ``_quant8.MIN_NUMEL`` entries in 8 bits.
    """

    # Names of the per-parameter state tensors, in the order the kernel takes them.
    _state_names: tuple[str, ...] = ()
    # Element-wise moment states that 8-bit mode may quantise (default: all of _state_names).
    _moment_names: tuple[str, ...] | None = None
    # Moments holding signed quantities (first moments); the rest are non-negative.
    _signed_states: frozenset[str] = frozenset()
    _supports_8bit: bool = False

    def __init__(
        self,
        params: Iterable[Any],
        defaults: dict[str, Any],
        *,
        fused: bool | None,
        state_bits: int = 32,
        foreach: bool | None = None,
    ) -> None:
        self.fused = check_fused(fused)
        self.foreach = check_foreach(foreach)
        self.state_bits = check_state_bits(state_bits)
        if self.state_bits == 8 and not self._supports_8bit:
            raise ValueError(f"state_bits=8 is not supported by {type(self).__name__}")
        if self.fused and not compile_available():
            raise RuntimeError("fused=True needs torch.compile, which is unavailable here")
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.is_complex():
                    raise TypeError(
                        f"{type(self).__name__} does not support complex parameters "
                        f"(got a {p.dtype} parameter of shape {tuple(p.shape)})"
                    )

    # -- hooks for subclasses
    def _step_group(self, group: dict[str, Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- the public step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimisation step; ``closure`` re-evaluates the loss (with grad)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._hp_cache: dict[tuple[Any, ...], torch.Tensor] = {}
        self._pending: dict[tuple[Any, ...], list[Any]] = {}
        self._pending_lists: dict[tuple[Any, ...], list[Any]] = {}
        for group in self.param_groups:
            self._step_group(group)
            self._flush()
        return loss

    # -- helpers for subclasses
    def _params_with_grad(self, group: dict[str, Any]) -> Iterator[torch.Tensor]:
        for p in group["params"]:
            g = p.grad
            if g is None:
                continue
            if g.is_sparse:
                raise ValueError(
                    f"{type(self).__name__} does not support sparse gradients "
                    f"(parameter of shape {tuple(p.shape)})"
                )
            if g.is_complex():
                raise TypeError(f"{type(self).__name__} does not support complex gradients")
            yield p

    def _state_dtype(self, p: torch.Tensor) -> torch.dtype:
        # Low-precision parameters keep float32 states: moments in bf16 lose small updates.
        return torch.float32 if p.dtype in (torch.bfloat16, torch.float16) else p.dtype

    def _init_state(self, p: torch.Tensor) -> dict[str, Any]:
        state = self.state[p]
        if "step" not in state:
            state["step"] = 0
            for name in self._state_names:
                self._store(state, name, self._zeros(name, p), p)
        return state

    def _zeros(self, name: str, p: torch.Tensor) -> torch.Tensor:
        """Initial value of state ``name``; scalar states override this."""
        return torch.zeros_like(
            p, dtype=self._state_dtype(p), memory_format=torch.contiguous_format
        )

    def _quantizable(self, name: str, value: torch.Tensor) -> bool:
        moments = self._state_names if self._moment_names is None else self._moment_names
        return self.state_bits == 8 and name in moments and value.numel() >= _quant8.MIN_NUMEL

    def _store(self, state: dict[str, Any], name: str, value: torch.Tensor, p: torch.Tensor):
        if self._quantizable(name, value):
            codes, absmax = _quant8.quantize(value, signed=name in self._signed_states)
            state[name] = codes
            state[name + "_absmax"] = absmax
        else:
            state[name] = value

    def _load(self, state: dict[str, Any], name: str, p: torch.Tensor) -> torch.Tensor:
        value = state[name]
        if value.dtype == torch.uint8:
            return _quant8.dequantize(
                value, state[name + "_absmax"], p.shape, signed=name in self._signed_states
            )
        return value

    def _reset_states(self, p: torch.Tensor, names: Iterable[str]) -> None:
        state = self.state[p]
        for name in names:
            current = state.get(name)
            if current is not None and current.dtype != torch.uint8:
                current.zero_()  # in place: no allocation, and the fast path's aliases stay valid
            else:
                self._store(state, name, self._zeros(name, p), p)

    def _hp(self, values: tuple[float, ...], device: torch.device) -> torch.Tensor:
        """The scalars of one kernel call as a float32 tensor (cached within a step)."""
        key = (values, device)
        hp = self._hp_cache.get(key)
        if hp is None:
            hp = torch.tensor(values, dtype=torch.float32, device=device)
            self._hp_cache[key] = hp
        return hp

    def _use_compiled(self, device: torch.device) -> bool:
        if self.fused is False:
            return False
        if self.fused is None and (device.type != "cpu" or not self._worth_compiling()):
            # On an accelerator the multi-tensor path launches a few kernels per op for all
            # tensors at once, the compiled one at least one per tensor: on a GPT-2-small-sized
            # model on an H200 the first was 1.8-6x fused AdamW (Stable-SPAM 13.5x), the
            # second 3.9-5.7x (Stable-SPAM 153x; bench/results/)
            return False
        return compile_available()

    def _worth_compiling(self) -> bool:
        """Whether the parameters hold ``COMPILE_FROM`` entries or more (counted again when a
        group is added)."""
        groups = len(self.param_groups)
        sized = self.__dict__.get("_sized")
        if sized is None or sized[0] != groups:
            total = sum(p.numel() for g in self.param_groups for p in g["params"])
            sized = self._sized = (groups, total >= COMPILE_FROM)
        return sized[1]

    def _run(
        self,
        kernel: Kernel,
        p: torch.Tensor,
        hp: tuple[float, ...],
        *flags: bool,
        names: Sequence[str] | None = None,
        after: Callable[[], None] | None = None,
    ) -> None:
        """Apply ``kernel`` to ``p``, its gradient and its states (``names``, default all) with
        the scalars ``hp``; then call ``after``. On the fast path the call is queued and run in
        chunks when the group is done (``_flush``)."""
        state = self.state[p]
        names = self._state_names if names is None else names
        stored = [state[n] for n in names]
        tensors = [p, p.grad, *stored]
        batchable = p.numel() > 0 and all(
            t.dtype != torch.uint8 and t.is_contiguous() for t in tensors
        )
        if batchable and self._use_compiled(p.device):
            key = (kernel, flags, p.dtype, p.device, len(names))
            self._pending.setdefault(key, []).append((self._aliases(p, tensors), hp, after))
            return
        if batchable and self.foreach is not False:
            # one list per kernel, scalars and dtypes: the foreach ops need one dtype per list
            dtypes = tuple(t.dtype for t in tensors)
            key = (kernel, flags, dtypes, p.device, len(names), tuple(hp))
            self._pending_lists.setdefault(key, []).append((tensors, after))
            return
        states = [self._load(state, n, p) for n in names]
        kernel(p, p.grad, *states, self._hp(hp, p.device), *flags)
        for n, value in zip(names, states, strict=True):
            if state[n].dtype == torch.uint8:
                self._store(state, n, value, p)
        if after is not None:
            after()

    def _aliases(self, p: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Flat aliases of ``[p, grad, *states]``; those of ``p`` and the states are reused while
        their storage does not change (the gradient's is not kept: it would keep a freed
        gradient alive)."""
        cache = self.__dict__.setdefault("_alias_cache", {})
        kept = [tensors[0], *tensors[2:]]
        ptrs = tuple((t.data_ptr(), t.numel()) for t in kept)
        hit = cache.get(id(p))
        if hit is None or hit[0] != ptrs:
            hit = (ptrs, [_flat_alias(t) for t in kept])
            cache[id(p)] = hit
        aliases = hit[1]
        return [aliases[0], _flat_alias(tensors[1]), *aliases[1:]]

    def _flush(self) -> None:
        """Run the queued calls: multi-tensor eager ones, and compiled ones ``CHUNK`` tensors per
        compiled call."""
        lists, self._pending_lists = self._pending_lists, {}
        for (kernel, flags, _, _, _, hp), items in lists.items():
            _foreach.run_blocked(kernel, [tensors for tensors, _ in items], hp, flags)
            for _, after in items:
                if after is not None:
                    after()
        pending, self._pending = self._pending, {}
        for (kernel, flags, _, device, _), all_items in pending.items():
            size = CHUNK
            fn = _compiled_chunk(kernel, size)
            for pad_numel, items in _size_classes(kernel, all_items):
                self._run_chunks(kernel, fn, size, pad_numel, items, flags, device)

    def _run_chunks(self, kernel, fn, size, pad_numel, items, flags, device) -> None:
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            args = [tensors for tensors, _, _ in chunk]
            rows = [hp for _, hp, _ in chunk]
            padding = size - len(chunk)
            if padding:
                slots = range(len(chunk), size)
                args += [_scratch(args[0], slot, pad_numel) for slot in slots]
                rows += [rows[0]] * padding
            hps = torch.tensor(rows, dtype=torch.float32, device=device)
            from torch._dynamo.utils import counters  # loaded with the compiler (3 s)

            before = counters["stats"]["unique_graphs"]
            began = time.perf_counter()
            with _no_duck_shapes():
                fn(args, hps, flags)
            if counters["stats"]["unique_graphs"] != before:
                name = kernel.__name__
                spent = time.perf_counter() - began
                COMPILE_SECONDS[name] = COMPILE_SECONDS.get(name, 0.0) + spent
            for _, _, after in chunk:
                if after is not None:
                    after()

    # -- state_dict: keep state dtypes (torch casts floating state to the parameter's dtype,
    # which would turn float32 moments of bf16 parameters into bf16 and 8-bit codes into floats)
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        by_id = dict(zip(saved_ids, params, strict=True))
        for key, saved in state_dict["state"].items():
            p = by_id.get(key)
            if p is None:
                continue
            for name, value in saved.items():
                if torch.is_tensor(value):
                    self.state[p][name] = value.detach().clone().to(device=p.device)
