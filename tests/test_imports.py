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


def test_importing_steadygrad_loads_no_compiler():
    # Loading torch's compiler takes seconds (3 s on the CI machine, as long as torch itself): a
    # command-line report or a script that only reads runs should not wait for it. The
    # monitor's hooks are compiler-disabled when a due step installs them, not at import.
    code = "import sys, steadygrad, steadygrad.cli; print('torch._dynamo' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
