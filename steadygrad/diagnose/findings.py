"""Deprecated: :class:`Finding` lives in :mod:`steadygrad.core` now."""

from steadygrad.core.deprecated import moved

__getattr__ = moved(__name__, {"Finding": "steadygrad.core", "SEVERITIES": "steadygrad.core"})
