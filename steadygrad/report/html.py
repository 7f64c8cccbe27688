"""The self-contained HTML report: plots inline as PNG data, no script, no network.

Every name that comes from a run (run names, metric and module names, evidence) is escaped.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from steadygrad.report import plots
from steadygrad.report.terminal import _fmt, loss_summary
from steadygrad.store.run import Run

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:70rem;
color:#222;padding:0 1rem}
h1{font-size:1.5rem} h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
.card{border:1px solid #ddd;border-radius:8px;padding:.8rem 1rem;margin:.6rem 0;background:#fafafa}
.status-finished{color:#2a7d2a}.status-crashed{color:#c62828}.status-interrupted{color:#b26a00}
.status-running{color:#1565c0}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
.critical{color:#c62828;font-weight:600}.warning{color:#b26a00}.info{color:#1565c0}
img{max-width:100%;display:block;margin:.5rem 0}
"""

# Metrics drawn as line plots, with whether their axis is logarithmic.
LINE_PLOTS = (("loss", False), ("grad_norm", True), ("param_norm", False))
HEATMAPS = ("grad_norm", "update_ratio", "act_rms")


def write_html(runs: Run | Sequence[Run], path: str | os.PathLike[str]) -> Path:
    """Write the report of one run, or a comparison of several, to ``path``.

    Example:
        >>> write_html(steadygrad.load("runs/demo"), "runs/demo/report.html")   # doctest: +SKIP
    """
    runs = [runs] if isinstance(runs, Run) else list(runs)
    if not runs:
        raise ValueError("runs must hold at least one Run")
    esc = html.escape
    title = " vs ".join(r.name for r in runs)
    body = [f"<h1>steadygrad report: {esc(title)}</h1>"]
    for run in runs:
        body.append(_summary_card(run))
    body.append("<h2>Training curves</h2>")
    for name, log in LINE_PLOTS:
        body.append(_img(plots.series_plot(runs, name, log=log), name))
    lr_names = sorted({n for r in runs for n in r.names() if n.startswith("lr/")})
    for name in lr_names:
        body.append(_img(plots.series_plot(runs, name, findings=False), name))
    for run in runs:
        maps = [(s, plots.heatmap(run, s)) for s in HEATMAPS]
        if any(uri for _, uri in maps):
            body.append(f"<h2>Per-layer signals: {esc(run.name)}</h2>")
            body.extend(_img(uri, f"{s} heatmap") for s, uri in maps if uri)
        body.append(_findings_table(run))
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M")
    page = (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f"<title>{esc(title)}: steadygrad</title><style>{_CSS}</style></head><body>"
        + "\n".join(b for b in body if b)
        + f"<p style='color:#888;font-size:.8rem'>made by steadygrad on {stamp}</p></body></html>"
    )
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path


def _img(uri: str | None, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">' if uri else ""


def _summary_card(run: Run) -> str:
    esc = html.escape
    info = loss_summary(run)
    status = run.status
    findings = run.findings()
    rows = [
        f"<b>{esc(run.name)}</b> &middot; status "
        f"<span class='status-{esc(status)}'>{esc(status)}</span> &middot; {run.num_steps} steps",
    ]
    if info:
        text = f"final loss {_fmt(info['final_loss'])}"
        if "best_loss" in info:
            text += f", best {_fmt(info['best_loss'])} at step {info['best_step']}"
        if "first_nonfinite_step" in info:
            text += f", non-finite from step {info['first_nonfinite_step']}"
        rows.append(esc(text))
    critical = [f for f in findings if f.severity == "critical"]
    first = (critical or findings or [None])[0]
    if first is None:
        rows.append("<span class=status-finished>no instability detected</span>")
    else:
        rows.append(
            f"<span class={esc(first.severity)}>first {esc(first.severity)} finding: "
            f"{esc(first.describe())}</span>"
        )
    return "<div class=card>" + "<br>".join(rows) + "</div>"


def _findings_table(run: Run) -> str:
    esc = html.escape
    findings = run.findings()
    if not findings:
        return f"<h2>Findings: {esc(run.name)}</h2><p>None.</p>"
    rows = "".join(
        f"<tr><td>{f.step}</td><td>{esc(f.kind)}</td><td>{esc(f.where or '-')}</td>"
        f"<td class={esc(f.severity)}>{esc(f.severity)}</td>"
        f"<td>{esc(', '.join(f'{k}={_fmt(v)}' for k, v in f.evidence.items()))}</td>"
        f"<td>{esc(', '.join(map(str, f.batch_ids[:16]))) if f.batch_ids else ''}</td></tr>"
        for f in findings
    )
    return (
        f"<h2>Findings: {esc(run.name)}</h2><table><tr><th>step</th><th>finding</th>"
        f"<th>where</th><th>severity</th><th>evidence</th><th>batch ids</th></tr>{rows}</table>"
    )
