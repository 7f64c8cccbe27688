"""Findings people see: the logging sink, and a status line that never fights another bar."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from steadygrad.core import Finding, Record, RunInfo
from steadygrad.monitor import progress
from steadygrad.monitor.findings_log import LoggingSink, SteadygradWarning, describe_finding


def test_each_warning_level_finding_is_logged_once_and_critical_ones_warn(tmp_path, caplog):
    sink = LoggingSink()
    sink.open(RunInfo("r", tmp_path))
    record = Record(step=5, values={"loss": float("nan")})
    spike = Finding("loss_spike", 5, None, {"z": 9.0}, "warning")
    nan = Finding("nonfinite", 5, "h.0.mlp", {"loss": float("nan")}, "critical")
    note = Finding("amp_overflow", 5, None, {}, "info")
    with caplog.at_level(logging.INFO, logger="steadygrad"), pytest.warns(SteadygradWarning) as w:
        sink.write(record, [spike, nan, note])
        sink.write(record, [nan])  # the same finding again: not repeated
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "steadygrad"]
    assert [level for level, _ in messages] == [logging.WARNING, logging.ERROR]
    assert "step 5: loss_spike" in messages[0][1] and "What to do" in messages[0][1]
    assert "step 5: nonfinite in h.0.mlp" in messages[1][1] and str(tmp_path) in messages[1][1]
    assert len(w) == 1 and "nonfinite in h.0.mlp" in str(w[0].message)


def test_level_and_unknown_kinds():
    with pytest.raises(ValueError, match="severity must be one of"):
        LoggingSink(level="loud")
    line = describe_finding(Finding("my_kind", 2, "x", {"a": 1}, "warning"), "runs/x")
    assert "step 2: my_kind in x (a=1)" in line and "steadygrad report runs/x" in line


def test_autopilot_actions_are_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="steadygrad"):
        LoggingSink().action(7, "skip_update", {"grad_norm": float("nan")})
    assert "step 7: skip_update (grad_norm=nan)" in caplog.text


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_status_line_is_off_without_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not progress.ProgressLine("r").enabled


def test_status_line_gives_way_to_a_live_tqdm_bar(monkeypatch):
    tqdm = pytest.importorskip("tqdm")
    monkeypatch.setattr("sys.stderr", FakeTerminal())
    record = Record(step=0, values={"loss": 1.0, "grad_norm": 1.0})
    assert not progress.other_progress_bar_active()
    bar = tqdm.tqdm(total=10, file=io.StringIO())
    try:
        assert progress.other_progress_bar_active()
        line = progress.ProgressLine("r")
        assert line.enabled
        line.update(record, [])
        assert not line.enabled and line._live is None  # never started
    finally:
        bar.close()
    assert not progress.other_progress_bar_active()


def test_status_line_stops_when_a_bar_appears_later(monkeypatch):
    tqdm = pytest.importorskip("tqdm")
    monkeypatch.setattr("sys.stderr", FakeTerminal())
    line = progress.ProgressLine("r", interval=0.0)
    line.update(Record(step=0, values={"loss": 1.0, "grad_norm": 1.0}), [])
    assert line._live is not None
    bar = tqdm.tqdm(total=10, file=io.StringIO())
    try:
        line.update(Record(step=1, values={"loss": 1.0, "grad_norm": 1.0}), [])
        assert not line.enabled and line._live is None
    finally:
        bar.close()
        line.close()


def test_a_disabled_tqdm_bar_does_not_count():
    tqdm = pytest.importorskip("tqdm")
    bar = tqdm.tqdm(total=3, disable=True)
    try:
        assert not progress.other_progress_bar_active()
    finally:
        bar.close()


def test_logging_needs_no_configuration(tmp_path):
    """A script that never set up logging still shows findings: Python's last-resort handler
    prints warnings to stderr (what a notebook, a SLURM log or CI shows)."""
    script = (
        "from steadygrad.core import Finding, Record\n"
        "from steadygrad.monitor.findings_log import LoggingSink\n"
        "LoggingSink().write(Record(step=1, values={}), [Finding('loss_spike', 1)])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "steadygrad warning: step 1: loss_spike" in done.stderr
