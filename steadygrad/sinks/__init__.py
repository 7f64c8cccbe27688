"""Sinks: where a run goes as it is recorded, besides its own store.

:class:`TensorBoardSink`, :class:`WandbSink` and :class:`MLflowSink` receive every Record as the
Monitor makes it (``Monitor(..., sinks=[...])``), with the findings and actions on the time axis
and the diagnosis at the end. :func:`replay` feeds a stored run through the same sinks after the
fact (``steadygrad export RUN --to tensorboard DIR``). Each imports its package only when opened.

Example:
    >>> from steadygrad.sinks import TensorBoardSink
    >>> replay(steadygrad.load("runs/a"), [TensorBoardSink("tb/a")])   # doctest: +SKIP
"""

from steadygrad.sinks.mlflow import MLflowSink
from steadygrad.sinks.replay import replay
from steadygrad.sinks.tensorboard import TensorBoardSink
from steadygrad.sinks.wandb import WandbSink

__all__ = ["MLflowSink", "TensorBoardSink", "WandbSink", "replay"]
