"""A forward steadygrad runs itself (the replay of a step that went non-finite, the check for
unused parameters) is not a training step: the model's hooks that compute (a pruning mask, a
weight norm, a library's parameter gather, a user's hook that rewrites an output) must run in
it, and the hooks that only observe (the user's lists of features, counters, loggers;
steadygrad's own signals) must not see it, or their records would hold a step training never
took (a list of per-step features one longer, a counter off by one).

Which is which is read from the hook: one written in torch or in an installed package
(``site-packages``) is the model's machinery and runs; one of steadygrad's is silenced; one of
the user's is silenced when it returns nothing (every ``return`` is a bare one, or it is a
lambda whose body is a call of a container's ``append``, ``update``, ... ), since a hook that
changes the output must return the new one. A user's hook that changes things in place and
returns nothing is silenced too: the replay then sees the model without it, which can cost the
replay its answer, never the run its records. A curvature probe's loss is the user's own
function and runs with every hook.
"""

from __future__ import annotations

import ast
import dis
import functools
import inspect
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import PurePath

import torch
from torch.nn.modules import module as torch_module

_INSTALLED = {"site-packages", "dist-packages"}
# methods that return None: a lambda whose body calls one of them returns nothing
_RECORDING = frozenset(
    {"append", "extend", "insert", "add", "update", "clear", "put", "put_nowait", "write"}
    | {"__setitem__"}
    | {"add_scalar", "add_scalars", "add_histogram", "log", "info", "debug"}
)
_HOOK_DICTS = ("_forward_pre_hooks", "_forward_hooks")
_GLOBAL_HOOK_DICTS = ("_global_forward_pre_hooks", "_global_forward_hooks")


def defined_in(hook: Callable) -> str:
    """The module a hook's code comes from: a function's own, a bound method's or a callable
    object's class's (``functools.partial`` looked through).

    Example:
        >>> from torch.nn.utils import prune
        >>> defined_in(prune.Identity())
        'torch.nn.utils.prune'
    """
    while isinstance(hook, functools.partial):
        hook = hook.func
    owner = getattr(hook, "__self__", None)
    if owner is not None and not isinstance(owner, type):
        return type(owner).__module__
    if hasattr(hook, "__code__"):
        return getattr(hook, "__module__", None) or ""
    return type(hook).__module__


def computes(hook: Callable) -> bool:
    """Whether a replayed forward must run ``hook``: torch's and installed packages' hooks (not
    steadygrad's), and the user's that may return a value.

    Example:
        >>> from torch.nn.utils import prune
        >>> computes(prune.Identity()), computes(observers_silenced)
        (True, False)
    """
    name = defined_in(hook)
    top = name.partition(".")[0]
    if top == "torch":
        return True
    if top == "steadygrad":
        return False
    path = getattr(sys.modules.get(top), "__file__", None)
    if path is not None and _INSTALLED & set(PurePath(path).parts):
        return True
    return not returns_nothing(hook)


def returns_nothing(hook: Callable) -> bool:
    """Whether ``hook`` can only return None (read from its code; False when it cannot be read).

    Example:
        >>> def keep(module, args, out):
        ...     seen["last"] = out
        >>> returns_nothing(keep), returns_nothing(lambda module, args, out: 2 * out)
        (True, False)
        >>> features = []
        >>> returns_nothing(lambda module, args, out: features.append(out))
        True
    """
    while isinstance(hook, functools.partial):
        hook = hook.func
    fn = getattr(hook, "__func__", hook)  # a bound method's function
    code = getattr(fn, "__code__", None) or getattr(type(hook).__call__, "__code__", None)
    if code is None:
        return False
    steps = list(dis.get_instructions(code))
    for i, step in enumerate(steps):
        if step.opname == "RETURN_CONST" and step.argval is not None:
            return False
        if step.opname == "RETURN_VALUE":
            before = steps[i - 1] if i else None
            bare = before is not None and before.opname == "LOAD_CONST" and before.argval is None
            if not bare and not (code.co_name == "<lambda>" and _records(fn, code)):
                return False
    return True


def _records(fn: Callable, code: object) -> bool:
    """Whether a lambda's body is a call of a method that returns None (``seen.append(out)``),
    read from its source; False when the source cannot be found or read unambiguously."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)).strip())
    except (OSError, TypeError, SyntaxError):
        return False
    names = list(code.co_varnames[: code.co_argcount])
    bodies = [
        node.body
        for node in ast.walk(tree)
        if isinstance(node, ast.Lambda) and [a.arg for a in node.args.args] == names
    ]
    return bool(bodies) and all(
        isinstance(b, ast.Call) and isinstance(b.func, ast.Attribute) and b.func.attr in _RECORDING
        for b in bodies
    )


def _silent(*args: object, **kwargs: object) -> None:
    """Stands in for a silenced hook (its place, order and handle kept)."""


@contextmanager
def observers_silenced(model: torch.nn.Module) -> Iterator[None]:
    """Run a block with the forward hooks that observe silenced on ``model``'s modules (and the
    process-wide module hooks), and put them back afterwards. Hooks added inside the block (the
    replay's own) run; a hook removed inside (a lazy module's one-off) stays removed.

    Example:
        >>> seen = []
        >>> layer = torch.nn.Linear(2, 2)
        >>> _ = layer.register_forward_hook(lambda m, a, out: seen.append(out))
        >>> with observers_silenced(layer):
        ...     _ = layer(torch.ones(2))
        >>> seen
        []
    """
    held = [getattr(m, name) for m in model.modules() for name in _HOOK_DICTS]
    held += [
        h for name in _GLOBAL_HOOK_DICTS if (h := getattr(torch_module, name, None)) is not None
    ]
    # in place: a handle removes its hook from the very dict it was registered in
    silenced = [{k: h for k, h in hooks.items() if not computes(h)} for hooks in held]
    try:
        for hooks, off in zip(held, silenced, strict=True):
            hooks.update(dict.fromkeys(off, _silent))
        yield
    finally:
        for hooks, off in zip(held, silenced, strict=True):
            hooks.update((k, h) for k, h in off.items() if k in hooks)


# The attributes every module has (its parameters, buffers, children and hooks): torch's own,
# which the re-run must leave as they are now (a hook removed inside stays removed).
_MODULE_OWN = frozenset(vars(torch.nn.Module()))


def _contents(value: object) -> object:
    """What a re-run may change inside ``value`` without reassigning it: a container's items, a
    generator's state (a drop-path's own draws); None for anything else."""
    if isinstance(value, list | dict | set):
        return value.copy()
    if isinstance(value, torch.Generator):
        return value.get_state()
    return None


def _put_back(value: object, contents: object) -> None:
    if isinstance(value, list):
        value[:] = contents
    elif isinstance(value, dict | set):
        value.clear()
        value.update(contents)
    elif isinstance(value, torch.Generator):
        value.set_state(contents)


@contextmanager
def attributes_kept(model: torch.nn.Module) -> Iterator[None]:
    """Run a block and put each of ``model``'s modules' own attributes back as they were: what a
    re-run forward sets on its module (``self.last_peak = ...``, a count of calls, a list it
    appends to, its own random generator's draws) is the step's, not the re-run's; the watched
    run goes on as it would have unwatched. An object held elsewhere and changed in place (a
    tensor attribute's values) stays changed.

    Example:
        >>> layer = torch.nn.Linear(2, 2)
        >>> layer.seen, layer.calls = ["the step's"], 1
        >>> with attributes_kept(layer):
        ...     layer.seen.append("the re-run's")
        ...     layer.calls, layer.extra = 2, 1
        >>> layer.seen, layer.calls, hasattr(layer, "extra")
        (["the step's"], 1, False)
    """
    kept = []
    for m in model.modules():
        own = {k: v for k, v in m.__dict__.items() if k not in _MODULE_OWN}
        kept.append(
            (m.__dict__, own, {k: c for k, v in own.items() if (c := _contents(v)) is not None})
        )
    try:
        yield
    finally:
        for now, before, contents in kept:
            for name in [n for n in now if n not in before and n not in _MODULE_OWN]:
                del now[name]
            now.update(before)
            for name, saved in contents.items():
                _put_back(before[name], saved)
