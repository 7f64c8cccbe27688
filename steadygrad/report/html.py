"""The self-contained HTML report: plots inline as PNG data, no script, no network.

One run: a summary card with its diagnosis, then training curves, curvature against its limits,
attention and output logits, per-layer heatmaps, and the findings and autopilot actions. Several
runs: the same curves overlaid, a comparison table, and each run's findings and actions (the
heatmaps stay in each run's own report). Every name that comes from a run (run
names, metric and module names, evidence) is escaped.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from steadygrad.core import metrics as M
from steadygrad.diagnose.diagnosis import DiagnosisReport, diagnose
from steadygrad.report import plots
from steadygrad.report.terminal import _fmt, loss_summary
from steadygrad.store.run import Run

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:72rem;
color:#222;padding:0 1rem}
h1{font-size:1.5rem} h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
.card{border:1px solid #ddd;border-radius:8px;padding:.8rem 1rem;margin:.6rem 0;background:#fafafa}
.status-finished{color:#2a7d2a}.status-crashed{color:#c62828}.status-interrupted{color:#b26a00}
.status-running{color:#1565c0}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
.critical{color:#c62828;font-weight:600}.warning{color:#b26a00}.info{color:#1565c0}
code{background:#eef;padding:0 .2rem;border-radius:3px;font-size:.8rem}
ol{margin:.3rem 0 .3rem 1.2rem;padding:0} li{margin:.25rem 0}
.ref{color:#666;font-size:.8rem}
img{max-width:100%;display:block;margin:.5rem 0}
"""

# (section title, [(metric, log axis)]) drawn as line plots, overlaid across runs.
CURVES = (
    ("Loss and learning rate", ((M.LOSS, False),)),
    ("Gradients and weights", ((M.GRAD_NORM, True), (M.PARAM_NORM, False))),
)
# (value, its limit, title) drawn against each other.
LIMITS = (
    (M.SHARPNESS, M.SHARPNESS_LIMIT, "sharpness (top Hessian eigenvalue) against its limit"),
    (
        M.PRECONDITIONED_SHARPNESS,
        M.PRECONDITIONED_SHARPNESS_LIMIT,
        "preconditioned sharpness against the adaptive edge-of-stability limit",
    ),
)
# Per-module signals drawn one line per module.
FAMILIES = (
    (M.ATTN_LOGIT_MAX, "largest attention logit per layer"),
    (M.DEAD_UNITS, "dead units per layer"),
    (M.EFFECTIVE_RANK, "effective feature rank per layer"),
)
# Global signals of the output logits, drawn if present.
OUTPUT_LOGITS = (M.LOGIT_LSE_MEAN, M.OUTPUT_LOGIT_MAX, M.OUTPUT_LOGIT_RMS, M.SOFTMAX_COLLAPSE)
# Every metric this page reads (the vocabulary test checks each one is declared).
READS = (
    *(m for _, pairs in CURVES for m, _ in pairs),
    *(m for spec in LIMITS for m in spec[:2]),
    *(m for m, _ in FAMILIES),
    *OUTPUT_LOGITS,
    M.LEARNING_RATE,
    M.HESSIAN_TRACE,
)


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
    diagnoses = {id(r): diagnose(r) for r in runs}
    body = [f"<h1>steadygrad report: {esc(title)}</h1>"]
    body += [_summary_card(r, diagnoses[id(r)]) for r in runs]
    if len(runs) > 1:
        body.append(_comparison_table(runs, diagnoses))
    for section, metrics in CURVES:
        images = [plots.series_plot(runs, m.name, log=log) for m, log in metrics]
        if section.startswith("Loss"):
            lr = sorted({n for r in runs for n in r.names() if M.LEARNING_RATE.owns(n)})
            images += [plots.series_plot(runs, n, findings=False) for n in lr]
        body.append(_section(section, images))
    body.append(
        _section(
            "Curvature",
            [plots.limit_plot(runs, v.name, lim.name, t) for v, lim, t in LIMITS]
            + [plots.series_plot(runs, M.HESSIAN_TRACE.name)],
        )
    )
    for run in runs:
        prefix = f": {esc(run.name)}" if len(runs) > 1 else ""
        names = run.names()
        panels = [plots.family_plot(run, m.name, t) for m, t in FAMILIES]
        panels += [plots.series_plot([run], m.name) for m in OUTPUT_LOGITS if m.name in names]
        body.append(_section(f"Attention, output logits and plasticity{prefix}", panels))
        if len(runs) == 1:  # a comparison leaves these to each run's own report
            families = sorted({n.split("/", 1)[0] for n in names if "/" in n})
            families = [f for f in families if f != M.LEARNING_RATE.name]
            heatmaps = [plots.heatmap(run, f) for f in families]
            body.append(_section("Per-layer heatmaps", heatmaps))
        body.append(_findings_table(run))
        body.append(_actions_table(run))
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


def _section(title: str, images: list[str | None]) -> str:
    imgs = "".join(f'<img src="{uri}" alt="{html.escape(title)}">' for uri in images if uri)
    return f"<h2>{html.escape(title)}</h2>{imgs}" if imgs else ""


def _summary_card(run: Run, report: DiagnosisReport) -> str:
    esc = html.escape
    info = loss_summary(run)
    status = run.status
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
    if report.healthy:
        rows.append("<span class=status-finished><b>Diagnosis: healthy.</b></span>")
    else:
        rows.append("<b>Diagnosis</b>, most likely cause first:")
    items = []
    for d in report.diagnoses[:4]:
        fixes = "".join(f"<br>fix: {esc(f.action)}: <code>{esc(f.code)}</code>" for f in d.fixes)
        items.append(
            f"<li><span class={esc(d.severity)}>{esc(d.summary)}</span>{fixes}"
            f"<br><span class=ref>{esc(d.reference)}</span></li>"
        )
    if items:
        rows.append("<ol>" + "".join(items) + "</ol>")
    if report.margins:
        margins = "; ".join(f"{esc(k)}: {esc(_fmt(v))}" for k, v in report.margins.items())
        rows.append(f"<span class=ref>margins measured: {margins}</span>")
    return "<div class=card>" + "<br>".join(rows) + "</div>"


def _comparison_table(runs: list[Run], diagnoses: dict[int, DiagnosisReport]) -> str:
    esc = html.escape
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "run",
            "status",
            "steps",
            "final loss",
            "best loss",
            "findings",
            "actions",
            "top diagnosis",
        )
    )
    rows = []
    for run in runs:
        info = loss_summary(run)
        top = diagnoses[id(run)].top
        rows.append(
            f"<tr><td>{esc(run.name)}</td><td>{esc(run.status)}</td><td>{run.num_steps}</td>"
            f"<td>{esc(_fmt(info.get('final_loss', '-')))}</td>"
            f"<td>{esc(_fmt(info.get('best_loss', '-')))}</td><td>{len(run.findings())}</td>"
            f"<td>{len(run.actions())}</td><td>{esc(top.summary if top else 'healthy')}</td></tr>"
        )
    return f"<h2>Comparison</h2><table><tr>{head}</tr>{''.join(rows)}</table>"


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


def _actions_table(run: Run) -> str:
    esc = html.escape
    actions = run.actions()
    if not actions:
        return ""
    rows = "".join(
        f"<tr><td>{a.step}</td><td>{esc(a.kind)}</td><td>{esc(_fmt(a.detail))}</td></tr>"
        for a in actions
    )
    return (
        f"<h2>Autopilot actions: {esc(run.name)}</h2>"
        f"<table><tr><th>step</th><th>action</th><th>detail</th></tr>{rows}</table>"
    )
