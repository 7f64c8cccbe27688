"""Seeing inside a model you did not write: on due steps, a ``TorchFunctionMode`` intercepts
chosen ``torch.nn.functional`` calls (the loss, the activations), and forward hooks tell which
module is running and which module produced a tensor.

Nothing is installed between due steps, so healthy steps off the cadence cost nothing; on a due
step the mode and hooks come off once the gradients are final (the optimizer's pre-step path),
so the optimizer's many per-tensor calls do not pass through Python.

Under ``torch.compile`` a due step's forward and backward run eagerly, the compiler's stance
forced to eager until the mode comes off: traced, the mode would break the graph at every call
it sees, each due step would compile the model's frames anew (a Hugging Face model's shared
forward wrappers past Dynamo's recompile limit within two due steps), and frames past the limit
would run eagerly from then on, off the cadence too. The observers and hooks are
``torch.compiler.disable``'d besides, for a stance set by the user.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from steadygrad.core import Signal


class _Mode(TorchFunctionMode):
    def __init__(self, watch: dict[Callable, Callable]) -> None:
        super().__init__()
        self.watch = watch
        self._observe = torch.compiler.disable(_observe)  # here, not at import (uncompiled)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        # every torch call of a due step's forward passes here: the watched ones only are
        # observed (in ``_observe``, compiler-disabled), the rest go straight on; an observer
        # that returns a callable is handed the call's output too
        kwargs = kwargs or {}
        seen = self.watch.get(func)
        if seen is None:
            return func(*args, **kwargs)
        then = self._observe(seen, args, kwargs)
        out = func(*args, **kwargs)
        if then is not None:
            self._observe(then, (out,), {})
        return out


class uncompiled:  # noqa: N801 - a decorator, named as one
    """A method ``torch.compiler.disable``'d on an instance's first look-up (a due step's hooks),
    not where it is defined: disabling loads the compiler (seconds), which importing steadygrad
    should not (a command-line report needs none of it); the instance keeps it.

    Example:
        >>> class Reader:
        ...     @uncompiled
        ...     def read(self, x):
        ...         return x
        >>> Reader().read(3)
        3
    """

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self.name = fn.__name__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        bound = obj.__dict__[self.name] = torch.compiler.disable(self.fn.__get__(obj, owner))
        return bound


def _observe(seen: Callable, args: tuple, kwargs: dict) -> Any:
    with torch.no_grad():
        try:
            return seen(args, kwargs)
        except Exception:  # noqa: BLE001 - a measurement never breaks the forward pass
            return None


class InterceptingSignal(Signal):
    """Base for signals that watch functional calls on due steps.

    Subclasses set :meth:`watched` (``{function: observer(args, kwargs)}``); inside an
    observer, :meth:`running` names the innermost module whose ``forward`` is running and
    :meth:`producer` the leaf module whose output a tensor is (``None`` when it is not one).
    """

    def __init__(self, every: int) -> None:
        super().__init__(every)
        self._names: dict[int, str] = {}
        self._leaves: set[int] = set()
        self._leaf_names: set[str] = set()
        self._stack: list[str] = []
        # storage address -> (leaf, its output): an address is that output's only while the
        # output lives (views keep it alive); once freed, another tensor may be put there
        self._made_by: dict[int, tuple[str, weakref.ref]] = {}
        self._composed_by: dict[int, tuple[str, weakref.ref]] = {}  # the same, non-leaf modules
        self._widths: dict[int, str] = {}  # last dim of a leaf's output -> the latest such leaf
        # autograd node that made a leaf's output -> (the leaf, that output's last dim)
        self._nodes: dict[object, tuple[str, int]] = {}
        self._composed_nodes: dict[object, str] = {}  # the same, innermost non-leaf modules
        self._handles: list[Any] = []
        self._mode: _Mode | None = None
        self.calls = 0  # forward calls of the model's modules seen so far

    def watched(self) -> dict[Callable, Callable]:
        raise NotImplementedError

    def attach(self, monitor: Any) -> None:
        super().attach(monitor)
        self._names = {id(m): name for name, m in monitor.model.named_modules()}
        self._leaves = {id(m) for m in monitor.model.modules() if next(m.children(), None) is None}
        self._leaf_names = {self._names[i] for i in self._leaves}

    def begin(self, step: int) -> None:
        self._stop()
        # Two process-wide module hooks that look the module up, not two hooks per module: a
        # model with thousands of modules would make (and the garbage collector then walk)
        # thousands of handles on every due step.
        push, pop = torch.compiler.disable(self._push), torch.compiler.disable(self._pop)
        self._handles.append(register_module_forward_pre_hook(push))
        self._handles.append(register_module_forward_hook(pop, always_call=True))
        self._mode = _Mode(self.watched())
        self._mode.__enter__()
        _eager.hold()

    def before_update(self) -> None:
        self._stop()  # forward, loss and backward are done: nothing left to watch this step

    def end(self, step: int) -> None:
        self._stop()

    def detach(self) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._mode is not None:
            _leave(self._mode)
            self._mode = None
            _eager.release()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._stack.clear()
        self._made_by.clear()
        self._composed_by.clear()
        self._widths.clear()
        self._nodes.clear()
        self._composed_nodes.clear()

    def _push(self, module: nn.Module, args: object) -> None:
        name = self._names.get(id(module))
        if name is not None:  # a module of the watched model
            self._stack.append(name)
            self.calls += 1

    def _pop(self, module: nn.Module, args: object, output: object) -> None:
        name = self._names.get(id(module))
        if name is None:
            return
        if self._stack:
            self._stack.pop()
        with torch._C.DisableTorchFunction():  # reading the output is no call to intercept
            self._keep_output(module, name, output)

    def _keep_output(self, module: nn.Module, name: str, output: object) -> None:
        if not (isinstance(output, torch.Tensor) and output.dim()):
            return
        if id(module) not in self._leaves:
            # the innermost module that returned it keeps it (outer ones pop later)
            kept = self._composed_by.get(_key(output))
            if kept is None or kept[1]() is not output:
                self._composed_by[_key(output)] = (name, weakref.ref(output))
            if name and output.grad_fn is not None:  # the model itself makes everything
                self._composed_nodes.setdefault(output.grad_fn, name)
            return
        self._made_by[_key(output)] = (name, weakref.ref(output))
        self._widths[output.shape[-1]] = name
        if output.grad_fn is not None:
            self._nodes[output.grad_fn] = (name, output.shape[-1])

    def running(self) -> str:
        """The innermost module whose forward is running ('' at the top level)."""
        return self._stack[-1] if self._stack else ""

    def running_leaf(self) -> str | None:
        """The running module when it is a leaf: an ``nn.ReLU`` whose forward made the call."""
        name = self.running()
        return name if name and name in self._leaf_names else None

    def in_forward(self) -> bool:
        """Whether a forward of the watched model (the root's included) is running: a call made
        outside every one is the loss's or the training loop's."""
        return bool(self._stack)

    def producer(self, tensor: torch.Tensor, last_dim: int | None = None) -> str | None:
        """The leaf module whose output ``tensor`` is (or a view of it); failing that, with
        ``last_dim``, the latest leaf whose output's last dimension is ``last_dim`` (a copy,
        e.g. logits upcast to float32 before the loss)."""
        found = _live(self._made_by, tensor)
        return found if found is not None or last_dim is None else self._widths.get(last_dim)

    def output_behind(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """The leaf module's output, alive, that ``tensor`` shares its storage and shape with
        (``tensor`` a detached copy of it): None for any other tensor."""
        made = self._made_by.get(_key(tensor))
        output = made[1]() if made is not None else None
        return output if output is not None and output.shape == tensor.shape else None

    def composer(self, tensor: torch.Tensor) -> str | None:
        """The innermost non-leaf module whose output ``tensor`` is (a layer written as a module
        with children that computes its output itself: a conditionally parameterised conv
        whose router is a child ``nn.Linear``)."""
        return _live(self._composed_by, tensor)

    def upstream(self, tensor: torch.Tensor, depth: int = 6) -> str | None:
        """The module whose output ``tensor`` was computed from, within ``depth`` autograd
        steps along first inputs (logits scaled, upsampled, moved channels-last for the loss;
        a pointer module's scores stacked over decoding steps): a leaf, or the innermost
        module with children that computed its output itself."""
        node = tensor.grad_fn
        for _ in range(depth):
            if node is None:
                return None
            leaf = self._nodes.get(node)
            name = leaf[0] if leaf else self._composed_nodes.get(node)
            if name is not None:
                return name
            following = [n for n, _ in node.next_functions if n is not None]
            node = following[0] if following else None
        return None

    def feeding(
        self, tensor: torch.Tensor, within: str, depth: int = 2, width: int | None = None
    ) -> str | None:
        """The first leaf module inside ``within`` ('' for the whole model) whose output, as
        wide as ``tensor``'s last dimension (or ``width``), ``tensor`` was computed from within
        ``depth`` autograd steps, breadth first, first inputs first: the layer whose units an
        activation applied to ``hh(h) + ih(x)`` (a recurrence written out in a forward) or to
        ``x + fc(x)`` (a residual) holds."""
        width = tensor.shape[-1] if width is None else width
        frontier, seen = [tensor.grad_fn], set()
        for _ in range(depth + 1):
            following = []
            for node in frontier:
                if node is None or node in seen:
                    continue
                seen.add(node)
                name, made = self._nodes.get(node, ("", 0))
                inside = bool(name) and (not within or name.startswith(within + "."))
                if inside and made == width:
                    return name
                following += [n for n, _ in node.next_functions]
            frontier = following
        return None


# Autograd steps that carry the values of their input unchanged: reshapes, slices and casts.
SAME_VALUES = frozenset(
    f"{name}Backward"
    for name in (
        "View", "UnsafeView", "Reshape", "ReshapeAlias", "ToCopy", "Slice", "Select", "Index",
        "Transpose", "Permute", "Clone", "Squeeze", "Unsqueeze", "Expand", "AsStrided",
        "Narrow", "T", "Alias",
    )
)  # fmt: skip


def float_tensors(tree: object) -> list[torch.Tensor]:
    """The floating-point tensors in a call's arguments or outputs (any nesting)."""
    if isinstance(tree, torch.Tensor):  # most calls: one tensor, or a tuple of them
        return [tree] if tree.is_floating_point() else []
    if type(tree) is tuple and all(isinstance(t, torch.Tensor) for t in tree):
        return [t for t in tree if t.is_floating_point()]
    return [t for t in tree_leaves(tree) if isinstance(t, torch.Tensor) and t.is_floating_point()]


def autograd_step(node: Any) -> str:
    """An autograd node's operation as the names above spell it: ``ViewBackward0`` -> ``ViewBackward``."""
    return type(node).__name__.rstrip("0123456789")


def saved_dim(node: Any) -> int | None:
    """The dimension an autograd node saved (a slice's, a cat's), signed: the node keeps it
    unsigned, -1 as 2**64 - 1; None for a node that saved none."""
    dim = getattr(node, "_saved_dim", None)
    if dim is None:
        return None
    return dim - 2**64 if dim >= 2**63 else dim


def _live(table: dict[int, tuple[str, weakref.ref]], tensor: torch.Tensor) -> str | None:
    """The module ``table`` holds for ``tensor``'s storage, if the output it saw there lives."""
    made = table.get(_key(tensor))
    return made[0] if made is not None and made[1]() is not None else None


class _EagerStance:
    """The compiler's stance forced to eager while any intercepting signal watches a step
    (``torch.compiler.set_stance``, whose context restores the stance it found)."""

    def __init__(self) -> None:
        self._held = 0
        self._stance: Any = None

    def hold(self) -> None:
        self._held += 1
        if self._held == 1 and not torch.compiler.is_compiling():
            try:
                stance = torch.compiler.set_stance("force_eager")
                stance.__enter__()
                self._stance = stance
            except Exception:  # noqa: BLE001 - a torch without stances: the signals still run
                self._stance = None

    def release(self) -> None:
        self._held = max(self._held - 1, 0)
        if not self._held and self._stance is not None and not torch.compiler.is_compiling():
            stance, self._stance = self._stance, None
            stance.__exit__(None, None, None)


_eager = _EagerStance()


def _leave(mode: TorchFunctionMode) -> None:
    """Take ``mode`` off the torch-function mode stack wherever it sits: the modes entered after
    it (another signal's, the user's) stay on, in their order. ``__exit__`` would pop the top."""
    above = []
    try:
        while torch._C._len_torch_function_stack():
            top = torch._C._pop_torch_function_stack()
            if top is mode:
                return
            above.append(top)
    finally:
        for other in reversed(above):
            torch._C._push_on_torch_function_stack(other)


def _key(tensor: torch.Tensor) -> int:
    try:
        return tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # e.g. a tensor subclass without storage
        return id(tensor)
