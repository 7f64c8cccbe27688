"""Observe: the Monitor, its Record, and the Signal extension point."""

from steadygrad.monitor.monitor import Monitor, watch
from steadygrad.monitor.record import Record
from steadygrad.monitor.signals import Signal

__all__ = ["Monitor", "Record", "Signal", "watch"]
