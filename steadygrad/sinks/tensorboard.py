"""TensorBoardSink: every recorded value as a TensorBoard scalar, findings and actions as text."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from steadygrad.core.finding import Finding
from steadygrad.core.record import Record
from steadygrad.core.sink import RunInfo, Sink
from steadygrad.sinks._text import action_line, diagnosis_text, finding_line, require

FINDINGS_TAG = "steadygrad/findings"
ACTIONS_TAG = "steadygrad/actions"
DIAGNOSIS_TAG = "steadygrad/diagnosis"


class TensorBoardSink(Sink):
    """Writes TensorBoard event files (``torch.utils.tensorboard``) as the run is recorded.

    Scalars keep their steadygrad names as tags (``grad_norm/fc.weight``: TensorBoard groups a
    family by the part before the ``/``), stored in double precision. Each step's findings and
    each action are text at their step; the diagnosis is text at the last step.

    Args:
        log_dir: where the event files go (default: ``RUN_DIR/tensorboard``).
        writer: an open ``SummaryWriter`` to write to instead (e.g. a trainer's own logger);
            it is flushed, not closed, at the end.

    Example:
        >>> mon = steadygrad.Monitor(model, opt, "runs/a", sinks=[TensorBoardSink("tb/a")])  # doctest: +SKIP
    """

    def __init__(self, log_dir: str | os.PathLike[str] | None = None, *, writer: Any = None):
        if log_dir is not None and not isinstance(log_dir, str | os.PathLike):
            raise TypeError(f"log_dir must be a path, got {type(log_dir).__name__}")
        self.log_dir = None if log_dir is None else Path(log_dir)
        self._writer = writer
        self._owns_writer = writer is None
        self._last_step = 0

    def open(self, run: RunInfo) -> None:
        if self._writer is None:
            tensorboard = require("torch.utils.tensorboard", "TensorBoardSink", "tensorboard")
            self.log_dir = self.log_dir or Path(run.run_dir) / "tensorboard"
            self._writer = tensorboard.SummaryWriter(log_dir=str(self.log_dir))
        if run.config:
            text = "\n".join(f"{k}: {v}" for k, v in run.config.items())
            self._writer.add_text("steadygrad/config", _code(text), 0)

    def write(self, record: Record, findings: Sequence[Finding]) -> None:
        wall = record.wall_time or None
        for name, value in record.values.items():
            self._writer.add_scalar(
                name, value, record.step, walltime=wall, new_style=True, double_precision=True
            )
        if findings:
            text = "\n\n".join(_code(finding_line(f)) for f in findings)
            self._writer.add_text(FINDINGS_TAG, text, record.step, walltime=wall)
        self._last_step = max(self._last_step, record.step)

    def action(self, step: int, kind: str, detail: Mapping[str, Any]) -> None:
        self._writer.add_text(ACTIONS_TAG, _code(action_line(step, kind, detail)), step)

    def close(self, status: str, diagnosis: Mapping[str, Any] | None = None) -> None:
        if self._writer is None:
            return
        text = diagnosis_text(diagnosis, status)
        self._writer.add_text(DIAGNOSIS_TAG, _code(text), self._last_step)
        if self._owns_writer:
            self._writer.close()
        else:
            self._writer.flush()


def _code(text: str) -> str:
    # TensorBoard renders text as Markdown: an indented block shows names verbatim.
    return "\n".join("    " + line for line in text.splitlines())
