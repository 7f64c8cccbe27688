"""Deprecated: :class:`Signal` lives in :mod:`steadygrad.core` now."""

from steadygrad.core.deprecated import moved

__getattr__ = moved(__name__, {"Signal": "steadygrad.core"})
