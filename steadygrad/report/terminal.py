"""The terminal summary of a run (rich)."""

from __future__ import annotations

import math

import numpy as np
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from steadygrad.diagnose.diagnosis import DiagnosisReport
from steadygrad.store.run import Run

_SEVERITY_STYLE = {"info": "cyan", "warning": "yellow", "critical": "bold red"}
_STATUS_STYLE = {
    "finished": "green",
    "running": "cyan",
    "crashed": "bold red",
    "interrupted": "yellow",
}


def loss_summary(run: Run) -> dict[str, float]:
    """Final and best loss, and the first step where the loss was not finite (if any)."""
    if "loss" not in run.names():
        return {}
    steps, loss = run.series("loss")
    finite = np.isfinite(loss)
    out: dict[str, float] = {"final_loss": float(loss[-1]), "last_step": int(steps[-1])}
    if finite.any():
        best = int(np.nanargmin(np.where(finite, loss, np.nan)))
        out["best_loss"] = float(loss[best])
        out["best_step"] = int(steps[best])
    if not finite.all():
        out["first_nonfinite_step"] = int(steps[np.argmin(finite)])
    return out


def summary(run: Run, max_findings: int = 20) -> Group:
    """A rich renderable: status, steps, losses, and the findings with their step and place."""
    info = loss_summary(run)
    status = run.status
    head = Text.assemble(
        ("run ", "bold"),
        (run.name, "bold"),
        "  status ",
        (status, _STATUS_STYLE.get(status, "")),
        f"  steps {run.num_steps}",
    )
    lines = [head]
    if info:
        parts = [f"final loss {_fmt(info['final_loss'])} (step {info['last_step']})"]
        if "best_loss" in info:
            parts.append(f"best loss {_fmt(info['best_loss'])} (step {info['best_step']})")
        if "first_nonfinite_step" in info:
            parts.append(f"loss non-finite from step {info['first_nonfinite_step']}")
        lines.append(Text("  ".join(parts)))
    findings = run.findings()
    if not findings:
        lines.append(Text("no findings: nothing unstable was detected", style="green"))
        return Group(*lines)
    table = Table(title=f"{len(findings)} finding(s)", title_justify="left", expand=False)
    for col in ("step", "finding", "where", "severity", "evidence"):
        table.add_column(col, overflow="fold")
    for f in findings[:max_findings]:
        evidence = brief(f.evidence)
        table.add_row(
            str(f.step),
            f.kind,
            f.where or "-",
            Text(f.severity, style=_SEVERITY_STYLE.get(f.severity, "")),
            evidence,
        )
    if len(findings) > max_findings:
        table.caption = f"... and {len(findings) - max_findings} more"
    lines.append(table)
    return Group(*lines)


def print_summary(run: Run, console: Console | None = None) -> None:
    """Print :func:`summary` to the terminal.

    Example:
        >>> print_summary(steadygrad.load("runs/demo"))   # doctest: +SKIP
    """
    (console or Console()).print(summary(run))


def brief(evidence: dict, limit: int = 4) -> str:
    """The first few evidence items, nested places shown by name only."""
    items = []
    for key, value in list(evidence.items())[:limit]:
        if isinstance(value, dict):
            value = value.get("module") or value.get("parameter") or _fmt(value)
        items.append(f"{key}={_fmt(value)}")
    return ", ".join(items)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)


def diagnosis_view(report: DiagnosisReport) -> Group:
    """A rich renderable of a diagnosis: each cause with its evidence, fixes and reference."""
    parts: list = []
    if report.healthy:
        parts.append(Text(f"{report.run_name}: healthy", style="bold green"))
    else:
        parts.append(
            Text(
                f"{report.run_name}: {len(report.diagnoses)} diagnosis(es), most likely first",
                style="bold",
            )
        )
    for i, d in enumerate(report.diagnoses, 1):
        parts.append(
            Text.assemble(
                f"{i}. ", (d.severity, _SEVERITY_STYLE.get(d.severity, "")), f"  {d.summary}"
            )
        )
        for fix in d.fixes:
            parts.append(Text.assemble("   fix: ", (fix.action, "green"), "  ", (fix.code, "dim")))
        parts.append(Text(f"   because: {d.reference}", style="italic"))
    if report.margins:
        table = Table(title="margins measured", title_justify="left")
        table.add_column("signal")
        table.add_column("value")
        for key, value in report.margins.items():
            table.add_row(key, _fmt(value))
        parts.append(table)
    return Group(*parts)


def print_diagnosis(report: DiagnosisReport, console: Console | None = None) -> None:
    (console or Console()).print(diagnosis_view(report))


def plain_summary(run: Run) -> str:
    """The summary as plain lines and tab-separated columns: for logs and pipes, never wrapped."""
    info = loss_summary(run)
    lines = [f"run {_cell(run.name)}\tstatus {run.status}\tsteps {run.num_steps}"]
    if info:
        parts = [f"final loss {_fmt(info['final_loss'])} (step {info['last_step']})"]
        if "best_loss" in info:
            parts.append(f"best loss {_fmt(info['best_loss'])} (step {info['best_step']})")
        if "first_nonfinite_step" in info:
            parts.append(f"loss non-finite from step {info['first_nonfinite_step']}")
        lines.append("\t".join(parts))
    findings = run.findings()
    if not findings:
        lines.append("no findings: nothing unstable was detected")
        return "\n".join(lines)
    lines.append("step\tfinding\twhere\tseverity\tevidence")
    lines += [
        "\t".join(map(_cell, (f.step, f.kind, f.where or "-", f.severity, brief(f.evidence))))
        for f in findings
    ]
    return "\n".join(lines)


def _cell(value: object) -> str:
    """One column's text: a tab or newline inside a name must not shift the columns."""
    return " ".join(str(value).split()) if isinstance(value, str) else str(value)
