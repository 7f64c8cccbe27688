"""Old import paths keep working for one release, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any


def moved(old_module: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``old_module`` whose ``names`` now live elsewhere.

    ``names`` maps each moved name to its new module. Example, in the old module::

        __getattr__ = moved(__name__, {"Record": "steadygrad.core"})
    """

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        warnings.warn(
            f"{old_module}.{name} moved to {names[name]}.{name}; the old path goes away in the "
            "next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(names[name]), name)

    return __getattr__
