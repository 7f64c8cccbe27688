"""Data available offline: text from the Python standard library, scikit-learn's digits, and
synthetic modular arithmetic."""

from steadygrad.data.digits import load_digits
from steadygrad.data.text import TextData, stdlib_text

__all__ = ["TextData", "load_digits", "stdlib_text"]
