"""Every docstring example in the package runs and prints what it says (the style rule asks for
one on the public API; an example that no longer runs misleads the reader who copies it)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import steadygrad

# every module but the command-line entry point (importing it runs the command)
MODULES = ["steadygrad"] + sorted(
    m.name
    for m in pkgutil.walk_packages(steadygrad.__path__, "steadygrad.")
    if m.name != "steadygrad.__main__"
)


@pytest.mark.parametrize("name", MODULES)
def test_the_examples_of_a_module_run(name):
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=flags, verbose=False, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
