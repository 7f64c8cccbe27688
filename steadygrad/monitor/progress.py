"""A one-line live status on the terminal (rich), throttled so it costs nothing per step."""

from __future__ import annotations

import sys
import time

from steadygrad.core.finding import Finding
from steadygrad.core.record import Record

_STYLE = {"info": "cyan", "warning": "yellow", "critical": "bold red"}


class ProgressLine:
    def __init__(self, run_name: str, enabled: bool | None = None, interval: float = 0.25) -> None:
        if enabled is None:
            enabled = sys.stderr.isatty()
        self.enabled = bool(enabled)
        self.run_name = run_name
        self.interval = interval
        self._last = 0.0
        self._findings = 0
        self._live = None
        if self.enabled:
            from rich.console import Console
            from rich.live import Live

            self._console = Console(stderr=True)
            self._live = Live("", console=self._console, refresh_per_second=4, transient=False)
            self._live.start()

    def update(self, record: Record, findings: list[Finding]) -> None:
        if not self.enabled:
            return
        for f in findings:
            self._findings += 1
            style = _STYLE.get(f.severity, "")
            self._console.print(f"[{style}]steadygrad {f.severity}[/] {f.describe()}", markup=True)
        now = time.monotonic()
        if now - self._last < self.interval and not findings:
            return
        self._last = now
        loss = record.get("loss")
        grad = record.get("grad_norm")
        self._live.update(
            f"[bold]{self.run_name}[/] step {record.step}  loss {loss:.4g}  "
            f"grad_norm {grad:.3g}  findings {self._findings}"
        )

    def action(self, step: int, kind: str, detail: dict) -> None:
        if self.enabled:
            self._console.print(f"[magenta]steadygrad autopilot[/] step {step}: {kind} {detail}")

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
