"""Sinks that write into a trainer's own logger: the steadygrad scalars, findings and diagnosis
land next to the trainer's own curves, in the same TensorBoard run, W&B run or MLflow run."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from steadygrad.core.sink import Sink
from steadygrad.sinks import MLflowSink, TensorBoardSink, WandbSink

log = logging.getLogger("steadygrad")


def tensorboard_sink(writer: Any) -> TensorBoardSink:
    """A sink into an open ``SummaryWriter`` (flushed, not closed, at the end)."""
    return TensorBoardSink(writer=writer)


def wandb_sink(run: Any) -> WandbSink:
    """A sink into an active W&B run (left open at the end)."""
    return WandbSink(run=run)


def mlflow_sink(run_id: str) -> MLflowSink:
    """A sink into an MLflow run of the current tracking URI (which the trainer's logger set)."""
    import mlflow

    return MLflowSink(mlflow.get_tracking_uri(), run_id=run_id)


def add_logger_sinks(options: dict[str, Any], found: Iterable[Sink]) -> list[Sink]:
    """Adds to ``options["sinks"]`` each sink in ``found`` whose type the user did not already
    pass; returns the ones added."""
    given: Sequence[Sink] = tuple(options.get("sinks") or ())
    taken = {type(s) for s in given}
    added = []
    for sink in found:
        if type(sink) not in taken:
            taken.add(type(sink))
            added.append(sink)
    if added:
        options["sinks"] = (*given, *added)
        log.info(
            "steadygrad: also writing into the trainer's %s", [type(s).__name__ for s in added]
        )
    return added


def guarded(what: str, build: Any) -> list[Sink]:
    """``[build()]``, or ``[]`` with a warning: a logger steadygrad cannot read never stops the
    run."""
    try:
        sink = build()
    except Exception as exc:
        log.warning("steadygrad: not writing into the trainer's %s: %r", what, exc)
        return []
    return [] if sink is None else [sink]
