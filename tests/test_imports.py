"""Every part imports on its own, whichever is imported first (no import cycles)."""

import subprocess
import sys

import pytest

FIRST = [
    "steadygrad.core",
    "steadygrad.monitor",
    "steadygrad.diagnose.detectors.transformer",
    "steadygrad.diagnose.autopilot",
    "steadygrad.store",
    "steadygrad.cli",
]


@pytest.mark.parametrize("module", FIRST)
def test_import_order(module):
    code = f"import {module}; import steadygrad, steadygrad.cli, steadygrad.studies, steadygrad.nn"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
