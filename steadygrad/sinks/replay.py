"""Replay a stored run through sinks, as if the Monitor were recording it now."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby

from steadygrad.core.record import Record
from steadygrad.core.sink import RunInfo, Sink
from steadygrad.store.run import Run


def replay(run: Run, sinks: Sequence[Sink], *, diagnose: bool = True) -> None:
    """Feed every recorded step, finding and action of ``run`` to ``sinks`` in step order, then
    close them with the run's status and (unless ``diagnose=False``) its diagnosis.

    Example:
        >>> from steadygrad.sinks import TensorBoardSink
        >>> replay(steadygrad.load("runs/a"), [TensorBoardSink("tb/a")])   # doctest: +SKIP
    """
    if not isinstance(run, Run):
        raise TypeError(f"run must be a steadygrad Run (steadygrad.load(...)), got {type(run)}")
    sinks = list(sinks)
    if not all(isinstance(s, Sink) for s in sinks):
        raise TypeError("sinks must be steadygrad.core.Sink instances")
    info = RunInfo(run.name, run.run_dir, dict(run.config), tuple(_declarations(run).values()))
    for sink in sinks:
        sink.open(info)
    findings = _by_step(run.findings())
    actions = _by_step(run.actions())
    for step, rows in groupby(run.rows(), key=lambda row: row[0]):
        rows = list(rows)
        _send_events_before(sinks, step, findings, actions)
        record = Record(step, {name: value for _, name, value, _ in rows}, wall_time=rows[0][3])
        for sink in sinks:
            sink.write(record, findings.pop(step, []))
        _send_actions(sinks, actions.pop(step, []))
    _send_events_before(sinks, None, findings, actions)  # those past the last recorded step
    report = None
    if diagnose:
        from steadygrad.diagnose.diagnosis import diagnose as run_diagnosis

        report = run_diagnosis(run).as_dict()
    for sink in sinks:
        sink.close(run.status, report)


def _send_events_before(sinks, step: int | None, findings: dict, actions: dict) -> None:
    """Findings and actions at steps without recorded values, before ``step`` (None: all)."""
    for at in sorted(set(findings) | set(actions)):
        if step is not None and at >= step:
            break
        if at in findings:
            for sink in sinks:
                sink.write(Record(at), findings.pop(at))
        _send_actions(sinks, actions.pop(at, []))


def _send_actions(sinks, actions) -> None:
    for action in actions:
        for sink in sinks:
            sink.action(action.step, action.kind, action.detail)


def _by_step(items) -> dict:
    out: dict = {}
    for item in items:
        out.setdefault(item.step, []).append(item)
    return dict(sorted(out.items()))


def _declarations(run: Run) -> dict:
    metrics = getattr(run, "metrics", None)  # runs stored before declarations were kept: none
    return metrics() if callable(metrics) else {}
