"""Forward hooks that measure module outputs on chosen steps and find where a NaN/Inf was born.

:class:`ActivationSignal` is the built-in signal that uses them: ``act_rms/<leaf module>`` on a
cadence, and after a non-finite step that was not measured, a forward guard that measures the
next few steps to find the producer.

On a hooked step every module reports the norm of its floating-point inputs and outputs (as
device tensors). Leaf modules give ``act_rms/<module>``. If a non-finite value appears, its
producer is the first module, in the order modules finished, whose output is non-finite while
its inputs were finite: modules that merely passed the value on had a non-finite input.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections import deque
from collections.abc import Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook
from torch.utils._pytree import tree_map

from steadygrad.core import Measurements, Record, Signal
from steadygrad.core.checks import non_negative_int, positive_int
from steadygrad.core.forward_hooks import attributes_kept, observers_silenced
from steadygrad.core.metrics import (
    ACT_RMS,
    AMP_SCALE,
    FINISHED_LATE,
    FLOAT16_OVERFLOW,
    INPUT_LAYER,
    INPUT_RMS,
    LOSS,
    NONFINITE_GRADS,
    NONFINITE_PARAMS,
    RECURRENT_MODULES,
    UNUSED_PARAMETERS,
)
from steadygrad.core.signal import host_random_state, random_state_kept, set_host_random_state
from steadygrad.monitor.backward_origin import GradientTrace
from steadygrad.monitor.intercept import autograd_step, float_tensors, saved_dim, uncompiled
from steadygrad.monitor.op_origin import FirstNonFinite
from steadygrad.monitor.tensor_groups import wide_dtype

log = logging.getLogger("steadygrad")

# graph nodes searched back from a repeated call's inputs for the module's earlier outputs, and
# how many of a module's repeated calls are searched (a loop feeds a cell back from its second)
RECURRENCE_SEARCH, RECURRENCE_TRIES = 64, 3


@dataclass
class Call:
    module: str
    input_norm: torch.Tensor | None
    output_norm: torch.Tensor | None
    numel: int
    half: bool = False  # an output in float16 (autocast): a non-finite one may be its overflow
    # on a replay, the module whose output the call's input was computed from (an operation
    # outside any module may stand between them: a sum-pool, a unit conversion)
    source: str | None = None


@dataclass
class TopCall:
    """A top-level forward call, kept until its step ends to be re-run on the same inputs."""

    module: nn.Module
    args: tuple
    kwargs: dict
    rng: tuple  # the random states it began with (dropout draws the same masks, LayerDrop
    # the same layers; NumPy's and Python's for the step's first call only, else None)
    grad: bool  # made with gradients enabled (its output may feed the loss's gradient)
    autocast: list[tuple[str, torch.dtype]]  # the devices autocast was on for, and the dtype
    made: tuple = ()  # its outputs' autograd nodes, while the check for unused tensors waits
    # its floating-point outputs, weakly: the values the loss was computed from, while the
    # training loop holds them (a replay after a finite update recomputes them on moved weights)
    outputs: tuple = ()
    # a module the loop called itself (a loss module holding a learnt variance): its few
    # parameters as they were before the step's update, which a replay runs it with
    before_update: dict[str, torch.Tensor] | None = None


def _autocast() -> list[tuple[str, torch.dtype]]:
    """The autocast state now: (device type, dtype) of each device it is enabled for."""
    on = []
    for device in ("cpu", "cuda"):
        if torch.is_autocast_enabled(device):
            on.append((device, torch.get_autocast_dtype(device)))
    return on


@contextmanager
def _autocast_as(state: list[tuple[str, torch.dtype]]):
    """Autocast as ``state`` (from :func:`_autocast`) recorded it."""
    with ExitStack() as stack:
        for device, dtype in state:
            stack.enter_context(torch.autocast(device, dtype=dtype))
        yield


def _input_rms(call: TopCall) -> torch.Tensor | None:
    """The RMS of a call's floating-point inputs, on their device (no synchronisation)."""
    inputs = float_tensors((call.args, call.kwargs))
    numel = sum(t.numel() for t in inputs)
    norm = _norm(inputs) if numel else None
    return None if norm is None else norm / math.sqrt(numel)


def _norm(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    if not tensors:
        return None
    with torch.no_grad():
        norms = [torch.linalg.vector_norm(t.detach(), dtype=wide_dtype(t)).float() for t in tensors]
        return norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack(norms))


class ActivationHooks:
    """Installs the hooks for one step, and reads them afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = [(name or "<root>", m) for name, m in model.named_modules()]
        self.name_of = {id(m): name for name, m in self.modules}
        self.leaves = {name for name, m in self.modules if next(m.children(), None) is None}
        self.recurrent_layers = builtin_recurrent(model)
        # a recurrence matters where weights sit (a shared dropout or activation module is none)
        self._weighted = {
            name for name, m in self.modules if next(m.parameters(), None) is not None
        }
        self.calls: list[Call] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        # with ``tracing`` (a replay): id of an output tensor -> the innermost module that
        # returned it, and the tensor (weakly: an id is the tensor's only while it lives)
        self.tracing = False
        self.made_by: dict[int, tuple[str, weakref.ref]] = {}
        # and each output's autograd node -> that module (a node outlives its tensor)
        self.node_made_by: dict[Any, str] = {}
        self.node_shape: dict[Any, tuple[int, ...]] = {}  # and the shape of that output
        # with ``tracing``: module -> whether its float16 output, not finite from finite inputs,
        # is finite computed again in float32 (it overflowed float16's range)
        self.float16_overflow: dict[str, bool] = {}
        self._widening = False
        # this step's outputs' autograd nodes per module, and the modules found in a recurrence
        self._made: dict[str, set] = {}
        # id of a tensor measured this step -> (the tensor, weakly; its version; its norm)
        self._measured: dict[int, tuple[weakref.ref, int, torch.Tensor]] = {}
        self._own_hooks: set[int] = set()  # modules with forward hooks of their own, by id
        self._tries: dict[str, int] = {}
        self._recurrent: list[str] = []

    @property
    def installed(self) -> bool:
        return bool(self._handles)

    def install(self) -> None:
        """One process-wide forward hook that looks the module up (see monitor.intercept): a
        hook per module would make thousands of handles on a big model's due steps, and the
        garbage collector's full passes over them cost more than the step's measurements. A
        module with forward hooks of its own gets one after them instead: process-wide hooks
        run first, and one of its own may replace the output (a user's, a library's)."""
        if self._handles:
            return
        self.calls, self._recurrent = [], []
        self._own_hooks = {id(m) for _, m in self.modules if m._forward_hooks}
        self._handles.append(register_module_forward_hook(self._observe_any))
        for _, module in self.modules:
            if id(module) in self._own_hooks:
                self._handles.append(module.register_forward_hook(self._observe))

    @uncompiled  # see monitor.intercept
    def _observe_any(self, module: nn.Module, args: tuple, output: object) -> None:
        if id(module) not in self._own_hooks:
            self._observe(module, args, output)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._made, self._tries = {}, {}  # let the step's graph go
        self._measured = {}

    @uncompiled  # see monitor.intercept
    def _observe(self, module: nn.Module, args: tuple, output: object) -> None:
        name = self.name_of.get(id(module))
        if name is None:
            return  # a module of another model, or the loss's
        with torch._C.DisableTorchFunction():  # measuring is no call for a signal to intercept
            self._measure_call(name, module, args, output)

    def _measure_call(self, name: str, module: nn.Module, args: tuple, output: object) -> None:
        outs = float_tensors(output)
        half = any(t.dtype == torch.float16 for t in outs)
        ins = float_tensors(args)
        traced = self.tracing and not self._widening
        source = _made_from(ins[0], self.node_made_by) if traced and ins else None
        self.calls.append(
            Call(
                name, self._norm(ins), self._norm(outs), sum(t.numel() for t in outs), half, source
            )
        )
        if traced and name == "<root>" and outs:
            self.calls[-1].source = _nonfinite_part(
                outs[0], self.node_made_by, self.node_shape
            ) or _made_from(outs[0], self.node_made_by)
        elif name == "<root>" and outs and not self.tracing:
            # the step's own pass: an operation of the model's forward after its modules (a
            # log of a head's output) is placed from the graph its modules' outputs left
            self.calls[-1].source = _made_after(outs[0], self._made)
        if name in self._weighted and torch.is_grad_enabled() and not self.tracing:
            self._recurrence(name, args, outs)
        if self.tracing and not self._widening:
            for t in outs:
                kept = self.made_by.get(id(t))
                if kept is None or kept[1]() is not t:  # inner modules return first
                    self.made_by[id(t)] = (name, weakref.ref(t))
                if t.grad_fn is not None:
                    self.node_made_by.setdefault(t.grad_fn, name)
                    self.node_shape.setdefault(t.grad_fn, tuple(t.shape))
            if name not in self.float16_overflow:
                self._check_float16(name, module, args, outs)

    def _norm(self, tensors: list[torch.Tensor]) -> torch.Tensor | None:
        """``_norm``, each tensor measured once while its values stay as they were: a module's
        input is most often the output the module before it returned, or one many modules read."""
        if not tensors:
            return None
        norms = [self._norm_of(t) for t in tensors]
        return norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack(norms))

    def _norm_of(self, t: torch.Tensor) -> torch.Tensor:
        if t.is_inference():  # no version counter to tell an in-place change by
            return _norm([t])
        kept = self._measured.get(id(t))
        if kept is not None and kept[0]() is t and kept[1] == t._version:
            return kept[2]
        norm = _norm([t])
        self._measured[id(t)] = (weakref.ref(t), t._version, norm)
        return norm

    def _check_float16(self, name: str, module: nn.Module, args: tuple, outs: list) -> None:
        """On a replay, a float16 output that is not finite from finite inputs is computed
        again in float32 with autocast off: finite there, it overflowed float16's range (65504),
        which no loss scaling helps."""
        if not any(t.dtype == torch.float16 for t in outs):
            return
        if all(bool(torch.isfinite(t).all()) for t in outs):
            return
        if not all(bool(torch.isfinite(t).all()) for t in float_tensors(args)):
            return
        wide = [
            a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args
        ]
        self._widening = True
        try:
            with torch.autocast(outs[0].device.type, enabled=False):
                again = float_tensors(module(*wide))
            self.float16_overflow[name] = bool(again) and all(
                bool(torch.isfinite(t).all()) for t in again
            )
        except Exception:  # noqa: BLE001 - a module that needs its keywords: nothing to say
            pass
        finally:
            self._widening = False

    def _recurrence(self, name: str, args: tuple, outs: list[torch.Tensor]) -> None:
        made = self._made.get(name)
        if made is not None and name not in self._recurrent:
            self._tries[name] = tries = self._tries.get(name, 0) + 1
            if tries > RECURRENCE_TRIES:
                return  # its first repeated calls were not fed its output: nor are the rest
            if _depends_on(args, made):
                self._recurrent.append(name)
        nodes = {t.grad_fn for t in outs if t.grad_fn is not None}
        if nodes:
            self._made.setdefault(name, set()).update(nodes)

    def input_layer(self) -> str | None:
        """The first module holding weights of its own whose forward finished this step with a
        floating-point input: the layer that read the batch (a leaf finishes before the module
        around it, in the order the forward ran them)."""
        for call in self.calls:
            weighted = call.module in self.leaves and call.module in self._weighted
            if weighted and call.input_norm is not None:
                return call.module
        return None

    # -- after the host transfer ---------------------------------------------------------------
    def tensor(self) -> torch.Tensor | None:
        """Every norm measured this step as one vector (input, output per call), for the
        Monitor's single transfer."""
        norms = [n for c in self.calls for n in (c.input_norm, c.output_norm)]
        present = [n for n in norms if n is not None]
        if not present:
            return None
        nan = torch.full((), math.nan, device=present[0].device)
        norms = [nan if n is None else n for n in norms]
        if len({n.device for n in present}) > 1:
            norms = [n.cpu() for n in norms]
        return torch.stack(norms)

    def read(self, values: list[float]) -> tuple[dict[str, float], dict | None]:
        """Turn the transferred norms into ``act_rms/<leaf>`` values and the non-finite producer."""
        sumsq: dict[str, float] = {}
        numel: dict[str, int] = {}
        producer = None
        first_bad = None
        for k, call in enumerate(self.calls):
            in_norm, out_norm = values[2 * k], values[2 * k + 1]
            if call.output_norm is None:
                continue
            if call.module in self.leaves and call.numel:
                sumsq[call.module] = sumsq.get(call.module, 0.0) + out_norm * out_norm
                numel[call.module] = numel.get(call.module, 0) + call.numel
            if math.isfinite(out_norm) or producer is not None:
                continue
            seen = call.input_norm is not None
            input_ok = not seen or math.isfinite(in_norm)
            # a module called with keywords only (a Hugging Face layer's hidden_states) shows
            # no input: after a non-finite output, it is presumed fed one, not its producer
            if input_ok and (seen or first_bad is None):
                producer = {"module": call.module, "output_norm": out_norm}
                if call.half:
                    producer["float16_output"] = True
                if call.module == "<root>":
                    # the model's own forward made it, outside its modules: say where
                    producer.update(_made_in_forward(call.source, first_bad), made_in="<root>")
            if first_bad is None:
                first_bad = {"module": call.module, "source": call.source}
        rms = {ACT_RMS.key(m): math.sqrt(s / numel[m]) for m, s in sumsq.items()}
        origin = None
        if first_bad is not None and producer is None and first_bad["source"] is not None:
            # no call seen to make it (a forward split over top-level calls): an operation
            # between two of them did
            producer = _between(first_bad["source"], first_bad["module"])
        if first_bad is not None:
            origin = producer or {
                "module": "<input>",
                "note": "the model's input was non-finite",
                "taken_in_by": first_bad["module"],
            }
        return rms, origin

    def recurrent(self) -> list[str]:
        """The modules this step's forward applied in a recurrence (one call's input made from
        an earlier call's output of the same module: a cell a loop steps through, an unrolled
        dynamics model, a layer shared across depth), and the built-in recurrent layers. A
        module merely called repeatedly (an input projection applied to each time step, an
        encoder a siamese net calls on both inputs) is no recurrence. A model unrolled whole (a
        simulator's rollout calling it on its own output) holds every module in the loop: none
        is singled out."""
        if "<root>" in self._recurrent:
            return list(self.recurrent_layers)
        found = [n for n in self._recurrent if n not in self.recurrent_layers]
        return self.recurrent_layers + found


def builtin_recurrent(model: nn.Module) -> list[str]:
    """The model's built-in recurrent layers and cells (``nn.RNN``, ``LSTM``, ``GRU``, cells)."""
    cells = (nn.RNNBase, nn.RNNCellBase)
    return [name for name, m in model.named_modules() if isinstance(m, cells)]


def _depends_on(args: tuple, nodes: set, budget: int = RECURRENCE_SEARCH) -> bool:
    """Whether the autograd graph behind ``args`` reaches one of ``nodes`` within ``budget``
    graph nodes of them (a recurrence feeds its output back within a few operations)."""
    frontier = deque(t.grad_fn for t in float_tensors(args) if t.grad_fn is not None)
    seen: set = set()
    while frontier and len(seen) < budget:
        node = frontier.popleft()
        if node in nodes:
            return True
        if node in seen:
            continue
        seen.add(node)
        frontier += [n for n, _ in node.next_functions if n is not None]
    return False


class ActivationSignal(Signal):
    """The built-in activation statistics: every ``every`` steps the RMS of each leaf module's
    output; when a non-finite value appears in the forward pass, the module that produced it.

    Finding the producer of a one-off, data-dependent NaN, off the cadence: the inputs of each
    top-level forward call (references, and the random state, so dropout draws the same masks)
    are kept until the step ends. Top-level calls are the model's own and those of its direct
    children made outside any other (a CRF layer the loss calls, a model used through methods
    that call its parts). When the gradients about to be applied are non-finite, the weights are
    copied before the corrupt update lands; the step's forward is then re-run on the same inputs
    with those weights under hooks (as large trainers re-run a suspicious step), and the model is
    put back as training left it. When the update was skipped (the autopilot, a GradScaler) the
    weights are still clean and are used as they are; when it was finite (a NaN in the loss that
    no gradient reached) the weights it left are. Where neither is possible (the pre-step
    check would cost a device synchronisation: on an accelerator without the autopilot), a guard
    measures the next ``guard_steps`` steps, and a module whose own weights the NaN update
    corrupted is never blamed: the origin is then reported as unknown.
    """

    metrics = (ACT_RMS, INPUT_RMS)

    def __init__(self, every: int = 25, guard_steps: int = 3) -> None:
        super().__init__(every=positive_int("activation_every", every))
        self.guard_steps = non_negative_int("guard_steps", guard_steps)
        self.hooks: ActivationHooks | None = None
        self._guard_left = 0
        self._hooked = False
        self._calls: list[TopCall] = []  # this step's top-level forward calls
        self._few: dict[int, bool] = {}  # a module the loop calls itself: few parameters?
        self._calls_step = -1
        self._depth = 0  # top-level calls running (one calling another is not top-level)
        self._clean_state: dict[str, torch.Tensor] | None = None
        # the calls and clean weights of the step last ended: a finish one step late (see
        # finishes_late) reads them, not the next step's
        self._ended: tuple[list[TopCall], dict[str, torch.Tensor] | None] = ([], None)
        self._input_hooks: list[Any] = []
        self._replaying = False
        self._corrupted: list[str] = []  # parameters non-finite before this step's forward
        self._unused_checked = False
        self._fed: list[bool] | None = None  # which outputs the loss read, while checked
        self._recurrent_noted: list[str] = []  # recurrent modules listed in the run's config
        self._input_layer_noted = False

    def attach(self, monitor: Any) -> None:
        super().attach(monitor)
        self.hooks = ActivationHooks(monitor.model)
        self._recurrent_noted = list(self.hooks.recurrent_layers)  # the Monitor lists these
        for module in (monitor.model, *monitor.model.children()):
            self._input_hooks += [
                module.register_forward_pre_hook(self._keep, with_kwargs=True),
                module.register_forward_hook(self._left, always_call=True),
            ]

    def due(self, step: int) -> bool:
        return True  # every recorded step: an unhealthy one arms the guard

    def begin(self, step: int) -> None:
        guard = self._guard_left > 0
        if guard:
            self._guard_left -= 1
        if guard or step % self.every == 0:
            self.hooks.install()

    def _keep(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._replaying or torch.compiler.is_compiling():
            return
        self._depth += 1
        if self._depth > 1:
            return  # inside another top-level call: re-running that one runs this one
        step = self.monitor.step_count
        if step != self._calls_step:  # a new step (also one that is not recorded)
            self._calls, self._calls_step = [], step
        # NumPy's and Python's states (~60 us to read) at the step's first call only: replays
        # run the calls in order from there, as the step did
        rng = host_random_state() if not self._calls else (torch.get_rng_state(), None, None)
        self._calls.append(TopCall(module, args, kwargs, rng, torch.is_grad_enabled(), _autocast()))

    def _left(self, module: nn.Module, args: tuple, output: object) -> None:
        if self._replaying or torch.compiler.is_compiling():
            return
        self._depth = max(self._depth - 1, 0)
        if not self._depth and self._calls and self._calls[-1].module is module:
            outputs = float_tensors(output)  # what the loss may be computed from
            self._calls[-1].outputs = tuple(weakref.ref(t) for t in outputs)
            if not self._unused_checked:
                self._calls[-1].made = tuple(t.grad_fn for t in outputs)

    def before_update(self) -> None:
        """Copy the clean weights if the gradients about to be applied are not finite: a
        replay on them finds the producer a hooked step's own pass did not (the loss made the
        NaN from finite outputs), or one no hooks saw."""
        if not self._calls:
            return
        if self.hooks.installed and _distributed() and not any(c.half for c in self.hooks.calls):
            return  # a collective more on every rank: hooked steps name a forward producer
        if _on_accelerator(self.monitor.model):
            return  # the check would synchronise the device every step
        _, norms = self.monitor.gradient_norms()  # reused by the step's record
        if norms.numel() and not bool(torch.isfinite(norms).all()):
            state = self.monitor.model.state_dict(keep_vars=False)
            self._clean_state = {k: v.detach().clone() for k, v in state.items()}
            return
        for call in self._calls:
            # a loss the model made NaN keeps its gradients finite (log's is 1/x, whatever x's
            # sign): the update then moves a loss module's variance back across zero, and a
            # replay on the moved one would find the loss finite
            module = call.module
            if module is self.monitor.model:
                continue
            few = self._few.get(id(module))
            if few is None:  # counted once: a large module called this way costs nothing
                size = sum(p.numel() for p in module.parameters())
                few = self._few[id(module)] = 0 < size <= FEW_PARAMETERS
            if few:
                call.before_update = {n: p.detach().clone() for n, p in module.named_parameters()}

    def end(self, step: int) -> None:
        self._hooked = self.hooks.installed
        self.hooks.remove()
        self._ended = (self._calls, self._clean_state)

    def finishes_late(self, step: int, begins_next: bool) -> bool:
        """Late, unless the next step's hooks (on the next cadence step, or while the guard is
        up) would meet this step's readings, or a re-run of its forward (the one-off check for
        unused parameters): the step's calls are kept at ``end``."""
        hooks_next = self._guard_left > 0 or (step + 1) % self.every == 0
        return not (hooks_next and (self._hooked or not self._unused_checked))

    def measure(self, step: int, out: Measurements) -> None:
        norms = self.hooks.tensor() if self._hooked else None
        if norms is not None:
            out.stash(self, norms)
        rms = _input_rms(self._calls[0]) if self._calls else None
        if rms is not None:  # every step: a bad batch comes once, off any cadence
            out.put(INPUT_RMS.name, rms)

    def finish(self, record: Record, raw: Sequence[float]) -> None:
        late = bool(record.meta.get(FINISHED_LATE))
        live = (self._calls, self._clean_state)  # the next step's, when late
        self._calls, self._clean_state = self._ended
        try:
            self._finish(record, raw, late)
        finally:
            self._ended = ([], None)
            self._calls, self._clean_state = live if late else ([], None)

    def _finish(self, record: Record, raw: Sequence[float], late: bool) -> None:
        if raw:
            rms, origin = self.hooks.read(raw)
            record.values.update(rms)
            self._note_recurrent(record)
            self._note_input_layer()
            if origin is not None:
                record.meta["forward_origin"] = _unless_corrupted(
                    self._overflowed(origin, record), self._corrupted
                )
        v = record.values
        unhealthy = (
            not math.isfinite(v.get(LOSS.name, 0.0))
            or v.get(NONFINITE_GRADS.name)
            or v.get(NONFINITE_PARAMS.name)
        )
        # late, the weights moved on a step: a replay runs on the step's own only from the
        # clean copy kept before its update; else the next steps, finished at once, trace it
        replayable = not late or self._clean_state is not None
        if unhealthy and not self._hooked:
            origin = self._replay(record) if replayable else None
            if origin is not None:
                record.meta["forward_origin"] = origin
            else:
                self._guard_left = self.guard_steps  # localise the producer on the next steps
        elif self._hooked and "forward_origin" in record.meta:
            self._guard_left = 0
        elif self._hooked and unhealthy:
            # every output this step's hooks read was finite: the loss made it, or the backward
            # pass did, on any step
            origin = self._replay(record) if replayable else None
            if origin is not None:
                record.meta["forward_origin"] = origin
            elif late:
                self._guard_left = self.guard_steps
        self._hooked = False
        if not self._unused_checked and not unhealthy and self._calls:
            self._check_unused(record)
        if v.get(NONFINITE_GRADS.name) and not record.meta.get("skipped"):
            # a non-finite update was applied: the weights it made non-finite are its victims
            self._corrupted += list(record.meta.get("nonfinite_parameters") or [])

    def _note_recurrent(self, record: Record) -> None:
        """Hand the step's recurrent modules to the detectors (``record.meta``), and add those
        found for the first time to the run's config, where the diagnosis reads them."""
        recurrent = self.hooks.recurrent()
        if not recurrent:
            return
        record.meta[RECURRENT_MODULES] = recurrent
        new = [m for m in recurrent if m not in self._recurrent_noted]
        if new:
            self._recurrent_noted += new
            try:
                self.monitor.store.update_config({RECURRENT_MODULES: self._recurrent_noted})
            except Exception as exc:  # a note for the diagnosis, never worth the run
                log.warning("steadygrad: could not note the recurrent modules: %r", exc)

    def _note_input_layer(self) -> None:
        """Note in the run's config, once, the layer that read the model's input (see
        :meth:`ActivationHooks.input_layer`): where unscaled inputs enter the model."""
        if self._input_layer_noted:
            return
        layer = self.hooks.input_layer()
        if layer is None:
            return
        self._input_layer_noted = True
        try:
            self.monitor.store.update_config({INPUT_LAYER: layer})
        except Exception as exc:  # a note for the diagnosis, never worth the run
            log.warning("steadygrad: could not note the input layer: %r", exc)

    def _overflowed(self, origin: dict, record: Record) -> dict:
        """A producer found by this step's hooks whose output was float16: replayed, to learn
        whether it overflowed float16's range (finite in float32), which its norm cannot say."""
        if not origin.pop("float16_output", False):
            return origin
        again = self._replay(record)
        if again and again.get(FLOAT16_OVERFLOW) and again.get("module") == origin["module"]:
            origin[FLOAT16_OVERFLOW] = True
        return origin

    def _replay(self, record: Record) -> dict | None:
        """Re-run the step's forward calls on their inputs with the weights before the update,
        under hooks; the first non-finite producer, or None when it cannot be done."""
        stepped_clean = record.meta.get("skipped") or record.meta.get("skipped_by")
        # A finite update (a NaN the loss's gradient never reached: a masked score, a detached
        # term) left finite weights one ordinary step on: a data-borne NaN comes back with them.
        finite_update = not record.values.get(NONFINITE_GRADS.name) and not record.values.get(
            NONFINITE_PARAMS.name
        )
        if not self._calls or (
            self._clean_state is None and not stepped_clean and not finite_update
        ):
            return None
        weights = (
            "before the update"
            if self._clean_state is not None or stepped_clean
            else "after a finite update"
        )
        # a finite loss whose gradient was not: where the backward pass made it is traced too,
        # unless the step ran under float16 autocast and was skipped (a GradScaler's scaled
        # gradient overflowed float16: the scale's doing, which the scaler handles, on as many
        # steps as it takes, with or without the scaler handed to the Monitor)
        loss_finite = math.isfinite(record.values.get(LOSS.name, 0.0))
        half = any(dtype == torch.float16 for c in self._calls for _, dtype in c.autocast)
        scaler_skipped = record.meta.get("skipped") and (half or AMP_SCALE.name in record.values)
        traced_backward = loss_finite and not finite_update and not scaler_skipped
        trace = GradientTrace(self.hooks.name_of) if traced_backward else None
        traced = None
        try:
            with self._rerunning(self._clean_state):
                outputs = []  # what the loss may have been computed from
                originals: list[torch.Tensor | None] = []  # those the step made, still held
                # a call's outputs as the step made them -> as the replay made them: a later
                # call the loop fed them to (a distance module taking two embeddings) takes
                # the replay's, through the replay's graph
                replayed: dict[int, torch.Tensor] = {}
                self.hooks.tracing = True
                traced = trace.install() if trace is not None else None
                for call in self._calls:
                    set_host_random_state(call.rng)
                    self.hooks.install()
                    # with the graph the call had: it tells which module an output came from
                    graph = torch.enable_grad() if call.grad else nullcontext()
                    if self._clean_state is None and call.before_update is not None:
                        for name, p in call.module.named_parameters():
                            p.copy_(call.before_update[name])  # put back when the replay ends
                        called = self.hooks.name_of.get(id(call.module), "the module")
                        weights += f" ({called}'s own as before it)"
                    args, kwargs = _replayed_inputs((call.args, call.kwargs), replayed)
                    with graph, _autocast_as(call.autocast):  # an fp16 overflow overflows again
                        out = float_tensors(call.module(*args, **kwargs))
                    held = [ref() for ref in call.outputs]
                    if len(held) == len(out):
                        replayed.update(
                            (id(h), t) for h, t in zip(held, out, strict=True) if h is not None
                        )
                    if call.grad:  # a call under no_grad made nothing the gradient came through
                        outputs += out
                        originals += held if len(held) == len(out) else [None] * len(out)
                    self.hooks.remove()
                    norms = self.hooks.tensor()
                    if norms is None:
                        continue
                    _, origin = self.hooks.read(norms.tolist())
                    if origin is not None:
                        if self.hooks.float16_overflow.get(origin.get("made_in", origin["module"])):
                            origin[FLOAT16_OVERFLOW] = True  # finite in float32
                        if origin.get("between"):  # outside any module: which operation
                            origin.update(self._operation_behind(call))
                        return {**origin, "replayed": True, "weights": weights}
                if loss_finite:
                    return self._in_the_backward(trace, outputs, weights)
                found = self._in_the_loss(outputs, originals)
                return {**found, "replayed": True, "weights": weights}
        except Exception:  # noqa: BLE001 - a replay never breaks training; the guard remains
            return None
        finally:
            if traced is not None:
                traced.remove()
            self.hooks.tracing = False
            self.hooks.made_by.clear()
            self.hooks.node_made_by.clear()
            self.hooks.node_shape.clear()
            self.hooks.float16_overflow.clear()

    def _operation_behind(self, call: TopCall) -> dict[str, str]:
        """Run ``call`` again (in the replay) under :class:`FirstNonFinite`: the operation
        outside any module that made the first non-finite value, and the module whose output
        its inputs were computed from (``{}`` when none is found)."""
        found = FirstNonFinite()
        set_host_random_state(call.rng)
        self.hooks.install()  # the modules' outputs, to tell which one the operation took
        try:
            graph = torch.enable_grad() if call.grad else nullcontext()
            with graph, _autocast_as(call.autocast), found:
                call.module(*call.args, **call.kwargs)
        finally:
            self.hooks.remove()
        if found.operation is None:
            return {}
        made = (_made_from(t, self.hooks.node_made_by) for t in found.inputs)
        source = next((m for m in made if m is not None), None)
        if source is None:
            return {"operation": found.operation}
        return {
            "module": source,
            "operation": found.operation,
            "note": f"{found.operation} made it from {source}'s finite output, outside any module",
        }

    def _in_the_backward(
        self, trace: GradientTrace | None, outputs: list[torch.Tensor], weights: str
    ) -> dict | None:
        """The forward pass and the loss were finite on replay, the gradient was not: the
        module whose backward made it (see :mod:`steadygrad.monitor.backward_origin`)."""
        if trace is None:
            return None
        params = [p for p in self.monitor.model.parameters() if p.requires_grad]
        with torch.enable_grad():
            trace.differentiate(outputs, params)
        found = trace.producer()
        return {**found, "replayed": True, "weights": weights} if found else None

    def _in_the_loss(
        self, outputs: list[torch.Tensor], originals: list[torch.Tensor | None]
    ) -> dict:
        """The forward was finite on replay, the loss was not: the NaN was made after the
        model's output, in the loss (or its targets). The output it came from, when one output
        holds values a loss cannot take: exact zeros or a few negatives in an output otherwise
        positive (a scale or a probability that underflowed, a rate that crossed zero: its log,
        square root or reciprocal is not finite), or values whose square or exp overflows.
        Failing that, the model's only output, when it had one: the loss made the NaN from it
        (or from its targets). Each output's values are read from the step's own (``originals``,
        when the loop still holds them) rather than the replay's: after a finite update the
        replay runs on weights that update moved, and a value that crossed zero may not again."""
        suspects, producers = [], set()
        hooks = self.hooks
        for t, original in zip(outputs, originals, strict=True):
            made = hooks.made_by.get(id(t))
            if made is None or made[1]() is not t:
                continue
            values = original if original is not None and original.shape == t.shape else t
            # an output the model's own code made (a squeeze, a ReLU after its last layer) is
            # placed at the module whose output it was computed from; one it concatenated from
            # several modules' outputs (a mean head and a variance head) is read part by part
            module, parts = made[0], None
            if module == "<root>":
                parts = _concatenated(t, hooks.node_made_by, hooks.node_shape, values)
                module = None if parts else _made_from(t, hooks.node_made_by)
            producers.add(module)  # None: made from several modules' outputs
            for part_module, part in parts or [(module or made[0], values)]:
                edge = _edge_values(part)
                if edge:
                    suspects.append((part_module, edge, float((part.detach() <= 0).float().mean())))
        suspects = _fewest_crossed(suspects)
        if len(suspects) == 1:
            module, edge, _ = suspects[0]
            return {"module": module, "in_the_loss": f"its output held {edge}"}
        if not suspects and len(outputs) == 1 and len(producers) == 1 and None not in producers:
            # the model's one output: whatever the loss did to make the NaN, it did to this
            return {
                "module": producers.pop(),
                "in_the_loss": "the model's only output; or its targets",
            }
        return {
            "module": None,
            "note": "the forward pass was finite on a replay of the step: the NaN was made "
            "after the model's output, in the loss or its targets",
        }

    def detach(self) -> None:
        self.hooks.remove()
        for handle in self._input_hooks:
            handle.remove()
        self._input_hooks = []

    def _check_unused(self, record: Record, most: int = 16) -> None:
        """Once, on the first healthy step with gradients: the trainable tensors whose gradient
        is missing or exactly zero are nudged (all together, then, if that changed the output
        and there are at most ``most``, one by one), and the step's forward re-run; one that
        leaves the outputs the loss was computed from as they were does nothing (an unused
        branch, a weight whose input is always zero, a head whose output the loss never reads):
        listed in ``record.meta[UNUSED_PARAMETERS]``, it is dead code, not a frozen layer. A
        tensor used but detached (its nudge reaches the loss's outputs), or frozen with
        ``requires_grad=False``, is left to the frozen-layer test."""
        params = [(n, p) for n, p in self.monitor.model.named_parameters() if p.requires_grad]
        grads = [p.grad for _, p in params if p.grad is not None]
        if not grads:
            return  # zero_grad ran before mon.step: nothing to tell yet
        self._unused_checked = True
        if _distributed() or any(type(g) is not torch.Tensor for g in grads):
            return  # a re-run forward would be one rank's collective, or a sharded tensor's
        try:
            with torch.no_grad():
                largest = torch.stack([g.abs().amax().float() for g in grads]).tolist()
            touched = dict(zip([n for n, p in params if p.grad is not None], largest, strict=True))
            suspects = [(n, p) for n, p in params if touched.get(n, 0.0) == 0.0]
            if not suspects or len(suspects) == len(params):
                return
            self._fed = _fed_the_loss(self._calls, getattr(self.monitor.inputs, "loss", None))
            with self._rerunning(None), torch.no_grad():
                baseline = self._outputs()
                # all at once first: when none of them changes the output (attention over one
                # token, a whole unused branch), that is one forward however many there are
                if self._unchanged(baseline, suspects):
                    unused = [n for n, _ in suspects]
                else:
                    unused = self._unused_among(baseline, suspects, most)
        except Exception:  # noqa: BLE001 - a check never breaks training; nothing is claimed
            return
        finally:
            self._fed = None
        if unused:
            record.meta[UNUSED_PARAMETERS] = unused

    def _unused_among(
        self, baseline: list[torch.Tensor], suspects: list[tuple[str, Any]], most: int
    ) -> list[str]:
        """The names of ``suspects`` whose nudge leaves the outputs ``baseline``, found in at
        most ``most`` forwards: one per tensor when there are that few, else per module that
        holds them, a group that changed the output split in halves while forwards remain
        (a module's unused weight beside its used bias)."""
        pending = [[t] for t in suspects] if len(suspects) <= most else _by_module(suspects)
        unused: list[str] = []
        for _ in range(most):
            if not pending:
                break
            group = pending.pop(0)
            if self._unchanged(baseline, group):
                unused += [n for n, _ in group]
            elif len(group) > 1:
                pending += [group[: len(group) // 2], group[len(group) // 2 :]]
        return unused

    def _unchanged(self, baseline: list[torch.Tensor], nudge: list[tuple[str, Any]]) -> bool:
        """Whether the outputs stay ``baseline`` with every tensor of ``nudge`` nudged."""
        kept = [p.detach().clone() for _, p in nudge]
        for _, p in nudge:
            p.add_(_noise(p))
        try:
            nudged = self._outputs()
        finally:
            for (_, p), value in zip(nudge, kept, strict=True):
                p.copy_(value)
        return len(nudged) == len(baseline) and all(
            torch.equal(a, b) for a, b in zip(baseline, nudged, strict=True)
        )

    def _outputs(self) -> list[torch.Tensor]:
        outs = []
        for call in self._calls:
            set_host_random_state(call.rng)
            with _autocast_as(call.autocast):  # a call fed another's fp16 output runs as it did
                outs += float_tensors(call.module(*call.args, **call.kwargs))
        if self._fed is not None and len(self._fed) == len(outs):
            outs = [t for t, fed in zip(outs, self._fed, strict=True) if fed]
        return outs

    @contextmanager
    def _rerunning(self, weights: dict[str, torch.Tensor] | None):
        """Re-run forward calls with ``weights`` (None: as they are) under no_grad, with the
        hooks that observe the model silenced (the user's never see a step training did not
        take); the model's state (BatchNorm statistics included), what the forward set on its
        modules and the random state are put back afterwards."""
        model = self.monitor.model
        now = None
        try:
            with (
                torch.no_grad(),
                random_state_kept(model),
                attributes_kept(model),
                observers_silenced(model),
            ):
                now = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if weights is not None:
                    model.load_state_dict(weights)
                self._replaying = True
                yield
        finally:
            self._replaying = False
            self.hooks.remove()
            if now is not None:
                model.load_state_dict(now)


# A module the loop calls itself is copied before each update only when it holds this many
# parameter elements or fewer (a loss module's variance, a task weighting's log-variances).
FEW_PARAMETERS = 4096


def _replayed_inputs(inputs: Any, replayed: dict[int, torch.Tensor]) -> Any:
    """``inputs`` with each tensor an earlier call of the step returned replaced by the replay's
    own (``replayed``, by the original's id)."""
    if not replayed:
        return inputs
    return tree_map(lambda x: replayed.get(id(x), x) if isinstance(x, torch.Tensor) else x, inputs)


def _fed_the_loss(calls: list[TopCall], loss: object) -> list[bool] | None:
    """Which of the calls' outputs (in the order :meth:`ActivationSignal._outputs` lists them)
    the loss was computed from: those whose autograd node the loss's graph reaches (the graph's
    nodes outlive its backward pass). None when that cannot be told, or when it reaches none."""
    root = getattr(loss, "grad_fn", None)
    made = [node for call in calls for node in call.made]
    if root is None or not made:
        return None
    seen: set = set()
    frontier = [root]
    while frontier:
        node = frontier.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        frontier += [n for n, _ in node.next_functions]
    fed = [node is not None and node in seen for node in made]
    return fed if any(fed) else None


def _made_from(t: torch.Tensor, node_made_by: dict[Any, str]) -> str | None:
    """The module (other than the model itself) whose output ``t`` was computed from: a walk
    back through ``t``'s autograd graph, a level at a time, to the nearest nodes that modules'
    outputs carried. None when that level holds more than one module's (a concatenation of two
    heads' outputs: which of them the loss made its NaN from cannot be told)."""
    if t.grad_fn is None:
        return None  # a leaf: the batch itself, or a weight
    level, seen = [t.grad_fn], set()
    while level:
        found = {node_made_by.get(node, "<root>") for node in level} - {"<root>"}
        if found:
            return found.pop() if len(found) == 1 else None
        seen.update(level)
        level = [n for node in level for n, _ in node.next_functions if n is not None]
        level = [n for n in dict.fromkeys(level) if n not in seen]
    return None


def _nonfinite_part(
    t: torch.Tensor, node_made_by: dict[Any, str], node_shape: dict[Any, tuple[int, ...]]
) -> str | None:
    """The module behind the one part of a concatenated output ``t`` (see :func:`_concatenated`)
    that holds its non-finite values: a mean head's output joined with a variance head's square
    root is non-finite in the variance's column only, and the walk back a level at a time meets
    the mean head first. None when ``t`` is finite, no concatenation, or non-finite in several
    parts. Read on a replay only (the check synchronises the device)."""
    if t.grad_fn is None or bool(torch.isfinite(t).all()):
        return None
    parts = _concatenated(t, node_made_by, node_shape)
    bad = [module for module, part in parts or [] if not bool(torch.isfinite(part).all())]
    return bad[0] if len(bad) == 1 else None


def _made_after(t: torch.Tensor, made: dict[str, set]) -> str | None:
    """The module whose output the model's output ``t`` was computed from by operations of the
    model's own forward, from ``made`` (each weighted module's output nodes this step); None
    when ``t`` is a module's output itself (the common case, told without a walk) or no one
    module's. The walk (:func:`_made_from`) runs only for a forward that works on its modules'
    outputs after them."""
    node = t.grad_fn
    if node is None or any(node in nodes for nodes in made.values()):
        return None
    by_node = {n: name for name, nodes in made.items() if name != "<root>" for n in nodes}
    return _made_from(t, by_node)


def _made_in_forward(source: str | None, first_bad: dict | None) -> dict[str, str]:
    """Where in the model's own forward (outside its modules) a non-finite value was made: from
    the finite output of the module ``source`` (the model's output was computed from it) when
    no module was fed it first; else before the module ``first_bad`` that took it in, from the
    output of the module its input was computed from, or from the model's finite input."""
    if first_bad is None:
        return _between(source, "the model's output") if source is not None else {}
    if first_bad["source"] is not None:
        return _between(first_bad["source"], first_bad["module"])
    return {
        "module": "<root>",
        "note": "the model's forward made it from its finite input",
        "taken_in_by": first_bad["module"],
    }


def _between(source: str, taker: str) -> dict[str, str]:
    """A non-finite value made outside any module, from ``source``'s finite output, before
    ``taker`` took it in: placed at ``source``, the nearest module."""
    return {
        "module": source,
        "between": taker,
        "note": f"made from {source}'s finite output outside any module, before {taker}",
    }


def _concatenated(
    t: torch.Tensor,
    node_made_by: dict[Any, str],
    node_shape: dict[Any, tuple[int, ...]],
    values: torch.Tensor | None = None,
) -> list[tuple[str, torch.Tensor]] | None:
    """``t`` (or ``values``, of its shape, split alike) split into the parts a ``torch.cat``
    joined, each with the module whose output it was computed from (the nearest along its
    branch, within a few autograd steps: a clamp or a softplus after a variance head), when the
    parts' widths, those modules' outputs', add up to ``t``'s; or into the slices a
    ``torch.stack`` joined, one per branch; None otherwise."""
    node = t.grad_fn
    step = autograd_step(node) if node is not None else None
    if step not in ("CatBackward", "StackBackward"):
        return None
    dim = saved_dim(node) % t.dim()
    if step == "StackBackward":
        found = [_nearest_module(branch, node_made_by) for branch, _ in node.next_functions]
        if None in found or len(found) != t.shape[dim]:
            return None
        slices = (t if values is None else values).detach().unbind(dim)
        return [(node_made_by[f], part) for f, part in zip(found, slices, strict=True)]
    modules, widths = [], []
    for branch, _ in node.next_functions:
        found = _nearest_module(branch, node_made_by)
        if found is None or len(node_shape.get(found, ())) != t.dim():
            return None
        modules.append(node_made_by[found])
        widths.append(node_shape[found][dim])
    if sum(widths) != t.shape[dim]:
        return None
    split = torch.split((t if values is None else values).detach(), widths, dim)
    return list(zip(modules, split, strict=True))


def _nearest_module(node: Any, node_made_by: dict[Any, str], depth: int = 4) -> Any:
    """The first autograd node a module's output carried, along first inputs from ``node``."""
    for _ in range(depth):
        if node is None or node in node_made_by:
            return node
        following = [n for n, _ in node.next_functions if n is not None]
        node = following[0] if following else None
    return node if node in node_made_by else None


# Of several outputs holding values at zero's edge, one whose share there is this many times
# smaller than any other's is the one that crossed it (a variance: one value in 64), the others
# values of either sign (a mean head).
CROSSED_FEWEST = 5


def _fewest_crossed(suspects: list[tuple[str, str, float]]) -> list[tuple[str, str, float]]:
    """``suspects`` (module, what it held, the share of its values at or below zero), or the one
    whose share is ``CROSSED_FEWEST`` times smaller than every other's."""
    if len(suspects) < 2:
        return suspects
    ranked = sorted(suspects, key=lambda s: s[2])
    fewest, next_fewest = ranked[0][2], ranked[1][2]
    return [ranked[0]] if 0 < fewest and CROSSED_FEWEST * fewest <= next_fewest else suspects


def _edge_values(t: torch.Tensor) -> str | None:
    """What in ``t`` a loss cannot take, if anything: a few exact zeros or negatives (a tenth of
    the entries at most: a ReLU's output has many zeros) in a tensor otherwise positive, exact
    ones in a tensor within [0, 1] (a probability rounded to certainty), values
    whose square overflows its dtype, or values whose exp does (a log-rate or a log-variance the loss
    exponentiates in that dtype)."""
    t = t.detach()
    zeros = int((t == 0).sum())
    if zeros and zeros <= 0.1 * t.numel() and bool((t >= 0).all()):
        return f"{zeros} exact zero(s) among positive values (an underflow)"
    ones = int((t == 1).sum())
    if ones and bool(((t >= 0) & (t <= 1)).all()):
        # a probability that rounded to 1: the log of its complement, log(1 - p), is -inf
        return f"{ones} value(s) exactly 1 in a probability (log(1 - p) is -inf)"
    negatives = int((t < 0).sum())
    if negatives and negatives <= 0.1 * t.numel() and bool((t[t >= 0] > 0).all()):
        # a rate, a scale or a variance that crossed zero: its log or square root is NaN
        return f"{negatives} negative value(s) among positive ones (their log or root is NaN)"
    largest = torch.finfo(t.dtype).max
    if bool((t.abs() > math.sqrt(largest)).any()):
        return f"values above {math.sqrt(largest):.3g}, whose square overflows {t.dtype}"
    if bool((t > math.log(largest)).any()):
        return f"values above {math.log(largest):.4g}, whose exp overflows {t.dtype}"
    return None


def _by_module(named: list[tuple[str, Any]]) -> list[list[tuple[str, Any]]]:
    """``(name, tensor)`` pairs grouped by the module that holds them, in order."""
    groups: dict[str, list[tuple[str, Any]]] = {}
    for name, tensor in named:
        groups.setdefault(name.rsplit(".", 1)[0], []).append((name, tensor))
    return list(groups.values())


def _noise(t: torch.Tensor) -> torch.Tensor:
    """Noise of a tenth of the tensor's own scale, random (a normalisation after it cannot take
    it out) and from its own generator (the dropout masks drawn after it stay the baseline's)."""
    draw = torch.Generator(device=t.device).manual_seed(0)
    noise = torch.randn(t.shape, generator=draw, device=t.device, dtype=t.dtype)
    return 0.1 * (t.detach().abs().mean() + 1e-3) * noise


def _distributed() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _on_accelerator(model: nn.Module) -> bool:
    p = next(model.parameters(), None)
    return p is not None and p.device.type != "cpu"


def _unless_corrupted(origin: dict, corrupted: list[str]) -> dict:
    """Never blame a module for a NaN its own weights, corrupted by an earlier update, made."""
    module = origin.get("module", "")
    if any(p == module or p.startswith(module + ".") for p in corrupted if module):
        return {
            "module": None,
            "note": f"unknown: {module}'s own weights were already non-finite (corrupted by an "
            "earlier non-finite update), so the first producer cannot be known from this step",
            "corrupted_module": module,
        }
    return origin
