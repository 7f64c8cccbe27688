"""steadygrad: see training instabilities coming, name their cause, and fix them."""

from steadygrad.diagnose.findings import Finding

__version__ = "0.1.0"

__all__ = ["Finding", "__version__"]
