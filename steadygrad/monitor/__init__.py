"""Observe: the Monitor, its built-in signals, and the optional signals."""

from steadygrad.core.deprecated import moved
from steadygrad.monitor.attention_logits import AttentionLogitSignal
from steadygrad.monitor.monitor import Monitor, watch
from steadygrad.monitor.output_logits import OutputLogitSignal, SoftmaxCollapseSignal
from steadygrad.monitor.plasticity import PlasticitySignal

__all__ = [
    "AttentionLogitSignal",
    "Monitor",
    "OutputLogitSignal",
    "PlasticitySignal",
    "SoftmaxCollapseSignal",
    "watch",
]

__getattr__ = moved(__name__, {"Record": "steadygrad.core", "Signal": "steadygrad.core"})
