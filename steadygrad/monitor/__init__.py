"""Observe: the Monitor, its Record, the Signal extension point, and the optional signals."""

from steadygrad.monitor.attention_logits import AttentionLogitSignal
from steadygrad.monitor.monitor import Monitor, watch
from steadygrad.monitor.output_logits import OutputLogitSignal, SoftmaxCollapseSignal
from steadygrad.monitor.plasticity import PlasticitySignal
from steadygrad.core.record import Record
from steadygrad.core.signal import Signal

__all__ = [
    "AttentionLogitSignal",
    "Monitor",
    "OutputLogitSignal",
    "PlasticitySignal",
    "Record",
    "Signal",
    "SoftmaxCollapseSignal",
    "watch",
]
