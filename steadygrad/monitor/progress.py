"""A one-line live status on the terminal (rich), throttled so it costs nothing per step.

It is a convenience, never the way findings reach you (they go to Python ``logging``, see
:mod:`steadygrad.monitor.findings_log`), so it gives way to anything else on the terminal: it is
off when stderr is not a terminal (notebooks, SLURM logs, ``nohup``, CI) and it stops for good
as soon as another progress bar is live (tqdm, as the Hugging Face Trainer and Lightning use, or
a rich live display), instead of fighting it for the last line.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from steadygrad.core.finding import Finding
from steadygrad.core.record import Record


def other_progress_bar_active() -> bool:
    """Whether a tqdm bar or a rich live display (other than ours) is on the terminal now.

    Only packages already imported are looked at: a bar from a package never imported cannot
    be live.

    Example:
        >>> other_progress_bar_active()
        False
    """
    tqdm_module = sys.modules.get("tqdm")
    tqdm_class = getattr(tqdm_module, "tqdm", None)
    instances = getattr(tqdm_class, "_instances", None)
    if instances:  # a WeakSet of the bars not yet closed
        try:
            if any(not getattr(bar, "disable", False) for bar in list(instances)):
                return True
        except (RuntimeError, TypeError):  # the set changed while we read it: assume a bar
            return True
    console = getattr(sys.modules.get("rich"), "_console", None)  # rich.get_console()'s console
    return bool(getattr(console, "_live_stack", None))


class ProgressLine:
    """``run  step 120  loss 2.31  grad_norm 0.83  findings 1`` on the terminal's last line.

    ``enabled=None`` (the default): on when stderr is a terminal. Started lazily at the first
    update, and only if no other progress bar is live; stopped for good when one appears.
    """

    def __init__(self, run_name: str, enabled: bool | None = None, interval: float = 0.25) -> None:
        if enabled is None:
            enabled = _stderr_is_terminal()
        self.enabled = bool(enabled)
        self.run_name = run_name
        self.interval = interval
        self._last = 0.0
        self._findings = 0
        self._live: Any = None

    def update(self, record: Record, findings: Sequence[Finding]) -> None:
        if not self.enabled:
            return
        self._findings += len(findings)
        now = time.monotonic()
        if now - self._last < self.interval and not findings:
            return
        self._last = now
        if self._live is None and not self._start():
            return
        if other_progress_bar_active():  # another bar came up after ours: give way for good
            self.close()
            self.enabled = False
            return
        loss = record.get("loss")
        grad = record.get("grad_norm")
        self._live.update(
            f"[bold]{self.run_name}[/] step {record.step}  loss {loss:.4g}  "
            f"grad_norm {grad:.3g}  findings {self._findings}"
        )

    def action(self, step: int, kind: str, detail: Mapping[str, Any]) -> None:
        """Actions are logged (logger ``steadygrad``); the line only counts findings."""

    def _start(self) -> bool:
        if other_progress_bar_active():
            self.enabled = False
            return False
        from rich.console import Console
        from rich.live import Live

        self._live = Live("", console=Console(stderr=True), refresh_per_second=4)
        self._live.start()
        return True

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False
