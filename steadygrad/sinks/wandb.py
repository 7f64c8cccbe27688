"""WandbSink: every recorded value logged to a Weights & Biases run (offline works, no network)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from steadygrad.core.finding import Finding
from steadygrad.core.record import Record
from steadygrad.core.sink import RunInfo, Sink
from steadygrad.sinks._text import action_line, diagnosis_text, finding_line, require

FINDINGS_KEY = "steadygrad/findings"
ACTIONS_KEY = "steadygrad/actions"
DIAGNOSIS_KEY = "steadygrad/diagnosis"
MODES = ("online", "offline", "disabled")


class WandbSink(Sink):
    """Logs each Record to W&B at its step; findings and actions as text at their step, the
    diagnosis in the run summary (and a table of every finding and action at the end).

    Args:
        project: the W&B project (for a run this sink starts).
        mode: ``"offline"`` (default: nothing leaves the machine; ``wandb sync`` uploads later),
            ``"online"`` or ``"disabled"``.
        dir: where W&B keeps its files (default: the run directory).
        run: an active ``wandb`` run to log into instead (e.g. a trainer's own logger); it is
            left open at the end.
        **init: passed on to ``wandb.init`` (``entity``, ``group``, ``tags``...).

    Example:
        >>> sinks = [WandbSink(project="my-model")]   # offline: `wandb sync` it later
        >>> mon = steadygrad.Monitor(model, opt, "runs/a", sinks=sinks)   # doctest: +SKIP
    """

    def __init__(
        self,
        project: str = "steadygrad",
        *,
        mode: str = "offline",
        dir: str | os.PathLike[str] | None = None,
        run: Any = None,
        **init: Any,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not isinstance(project, str) or not project:
            raise ValueError(f"project must be a non-empty string, got {project!r}")
        self.project, self.mode, self.init = project, mode, init
        self.dir = None if dir is None else Path(dir)
        self.run = run
        self._owns_run = run is None
        self._table: list[list[Any]] = []

    def open(self, run: RunInfo) -> None:
        if self.run is not None:
            return
        wandb = require("wandb", "WandbSink", "wandb")
        self.dir = self.dir or Path(run.run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        options = {"project": self.project, "name": run.name, "config": dict(run.config)}
        self.run = wandb.init(
            **{**options, **self.init}, dir=str(self.dir), mode=self.mode, reinit="create_new"
        )

    def write(self, record: Record, findings: Sequence[Finding]) -> None:
        values: dict[str, Any] = dict(record.values)
        if findings:
            values[FINDINGS_KEY] = "\n".join(finding_line(f) for f in findings)
            self._table += [[f.step, "finding", finding_line(f)] for f in findings]
        self.run.log(values, step=record.step)

    def action(self, step: int, kind: str, detail: Mapping[str, Any]) -> None:
        line = action_line(step, kind, detail)
        self._table.append([step, "action", line])
        # W&B drops a log at a step below its current one: the text names the true step.
        self.run.log({ACTIONS_KEY: line}, step=max(step, self.run.step))

    def close(self, status: str, diagnosis: Mapping[str, Any] | None = None) -> None:
        if self.run is None:
            return
        self.run.summary[DIAGNOSIS_KEY] = diagnosis_text(diagnosis, status)
        self.run.summary["steadygrad/status"] = status
        if self._table:
            wandb = require("wandb", "WandbSink", "wandb")
            table = wandb.Table(columns=["step", "type", "text"], data=self._table)
            self.run.log({"steadygrad/events": table}, step=self.run.step)
        if self._owns_run:
            self.run.finish(exit_code=0 if status == "finished" else 1)
