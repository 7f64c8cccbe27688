"""MLflowSink: every recorded value as an MLflow metric, in a local file store or any server."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from steadygrad.core.finding import Finding
from steadygrad.core.record import Record
from steadygrad.core.sink import RunInfo, Sink
from steadygrad.sinks._text import action_line, as_json, diagnosis_text, finding_line, require

FINDINGS_METRIC = "steadygrad.findings"  # the number of findings at a step: events on the axis
ACTIONS_METRIC = "steadygrad.actions"
_BATCH = 1000  # MLflow's limit of metrics per log_batch call
_UNSAFE = re.compile(r"[^\w./ -]")  # MLflow keys: letters, digits, _ - . space and /


TOTAL = "total"


def metric_key(name: str, families: set[str] | frozenset[str] = frozenset()) -> str:
    """The MLflow key of a steadygrad metric name: characters MLflow refuses become ``_``, and
    the bare name of a family (``grad_norm``, over every parameter) becomes ``grad_norm/total``,
    since MLflow's file store keeps ``grad_norm/<parameter>`` in a folder named ``grad_norm``.

    Example:
        >>> metric_key("grad_norm", {"grad_norm"}), metric_key("lr/0:x")
        ('grad_norm/total', 'lr/0_x')
    """
    if name in families:
        name = f"{name}/{TOTAL}"
    return _UNSAFE.sub("_", name)


class MLflowSink(Sink):
    """Logs each Record's values to an MLflow run at their step. Findings and actions are counted
    per step (``steadygrad.findings``, ``steadygrad.actions``) and written in full, with the
    diagnosis, as the run's ``steadygrad/events.txt`` and ``steadygrad/diagnosis.txt``.

    Args:
        tracking_uri: a local directory (a file store; default ``RUN_DIR/mlruns``) or any MLflow
            tracking URI. For a local directory this sets ``MLFLOW_ALLOW_FILE_STORE=true`` unless
            it is set: MLflow 3 keeps the file store but asks for that opt-in.
        experiment: the experiment's name (created if missing).
        run_id: an active MLflow run to log into (e.g. a trainer's own logger); left open.

    Example:
        >>> sinks = [MLflowSink("mlruns", experiment="my-model")]
        >>> mon = steadygrad.Monitor(model, opt, "runs/a", sinks=sinks)   # doctest: +SKIP
    """

    def __init__(
        self,
        tracking_uri: str | os.PathLike[str] | None = None,
        *,
        experiment: str = "steadygrad",
        run_id: str | None = None,
    ) -> None:
        if tracking_uri is not None and not isinstance(tracking_uri, str | os.PathLike):
            raise TypeError(f"tracking_uri must be a path or URI, got {type(tracking_uri)}")
        if not isinstance(experiment, str) or not experiment:
            raise ValueError(f"experiment must be a non-empty string, got {experiment!r}")
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_id = run_id
        self._owns_run = run_id is None
        self._client: Any = None
        self._events: list[str] = []
        self._keys: dict[str, str] = {}
        self._families: set[str] = set()

    def open(self, run: RunInfo) -> None:
        tracking = require("mlflow.tracking", "MLflowSink", "mlflow")
        uri = _tracking_uri(self.tracking_uri or Path(run.run_dir) / "mlruns")
        self.tracking_uri = uri
        self._client = tracking.MlflowClient(tracking_uri=uri)
        if self.run_id is None:
            found = self._client.get_experiment_by_name(self.experiment)
            experiment_id = (
                found.experiment_id if found else self._client.create_experiment(self.experiment)
            )
            self.run_id = self._client.create_run(experiment_id, run_name=run.name).info.run_id
        for key, value in run.config.items():
            self._client.log_param(self.run_id, metric_key(str(key)), str(value)[:6000])

    def write(self, record: Record, findings: Sequence[Finding]) -> None:
        entities = require("mlflow.entities", "MLflowSink", "mlflow")
        stamp = int((record.wall_time or 0.0) * 1000)
        self._learn_families(record.values)
        metrics = [
            entities.Metric(self._key(name), float(value), stamp, record.step)
            for name, value in record.values.items()
        ]
        if findings:
            metrics.append(entities.Metric(FINDINGS_METRIC, len(findings), stamp, record.step))
            self._events += [f"step {f.step}: {finding_line(f)}" for f in findings]
        for start in range(0, len(metrics), _BATCH):
            self._client.log_batch(self.run_id, metrics=metrics[start : start + _BATCH])

    def action(self, step: int, kind: str, detail: Mapping[str, Any]) -> None:
        self._events.append(action_line(step, kind, detail))
        self._client.log_metric(self.run_id, ACTIONS_METRIC, 1.0, step=step)

    def close(self, status: str, diagnosis: Mapping[str, Any] | None = None) -> None:
        if self._client is None:
            return
        client, run_id = self._client, self.run_id
        client.log_text(run_id, diagnosis_text(diagnosis, status), "steadygrad/diagnosis.txt")
        if diagnosis:
            client.log_text(run_id, as_json(diagnosis), "steadygrad/diagnosis.json")
        client.log_text(run_id, "\n".join(self._events), "steadygrad/events.txt")
        client.set_tag(run_id, "steadygrad.status", status)
        if self._owns_run:
            state = {"finished": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED")
            client.set_terminated(run_id, status=state)

    def _key(self, name: str) -> str:
        key = self._keys.get(name)
        if key is None:
            key = self._keys[name] = metric_key(name, self._families)
        return key

    def _learn_families(self, values: Mapping[str, float]) -> None:
        """The families present, from the keys, learnt before any bare name is given a key (a
        declared family with no member here keeps its bare name: ``loss``, not ``loss/total``)."""
        if len(self._keys) < len(values):
            for name in values:
                family, sep, _ = name.partition("/")
                if sep and family not in self._families:
                    self._families.add(family)
                    self._keys.pop(family, None)


def _tracking_uri(target: str | os.PathLike[str]) -> str:
    text = os.fspath(target)
    if "://" in text or text.startswith(("databricks", "sqlite:")):
        return text
    path = Path(text).resolve()
    path.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return path.as_uri()
