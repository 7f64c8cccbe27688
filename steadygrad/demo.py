"""The demo: the whole story on TinyGPT and standard-library text.

1. a sane run (SGD with momentum, warm-up to lr 0.2);
2. the same model warming up to lr 2.0, which becomes unstable; its diagnosis;
3. the unstable run again with the diagnosis's recommended fix;
4. the unstable run again with the autopilot (roll back and lower the LR on divergence);
5. a report per run and a comparison report of all of them.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from steadygrad.core.checks import finite_float, positive_int
from steadygrad.curvature import SharpnessProbe
from steadygrad.data import TextData
from steadygrad.diagnose import Autopilot, DiagnosisReport, diagnose
from steadygrad.models import TinyGPT
from steadygrad.monitor import Monitor
from steadygrad.report import print_summary, write_html
from steadygrad.report.terminal import print_diagnosis
from steadygrad.store import DB_NAME_FILE, Run, load

SANE_LR = 0.2
UNSTABLE_LR = 2.0
WARMUP = 250
# Causes whose first remedy is a smaller step: the demo's "recommended fix" halves the peak LR.
LR_CAUSES = {
    "sharpness_above_limit",
    "loss_spike",
    "nonfinite",
    "gradient_spike",
    "update_ratio_out_of_range",
    "attention_logit_growth",
}


@dataclass
class DemoResult:
    runs: dict[str, Run]
    reports: dict[str, Path]
    diagnosis: DiagnosisReport
    comparison: Path


def train_tiny_gpt(
    run_dir: str | Path,
    peak_lr: float,
    steps: int = 300,
    warmup: int = WARMUP,
    seed: int = 0,
    progress: bool | None = None,
    patience: int = 10,
    autopilot: bool = False,
    name: str | None = None,
) -> Run:
    """Train a 3-layer TinyGPT with SGD (momentum 0.9) and a linear warm-up to ``peak_lr``,
    recorded by a Monitor in ``run_dir``. Stops after ``patience`` non-finite losses in a row.

    Example:
        >>> run = train_tiny_gpt("runs/tiny", peak_lr=0.2, steps=50)   # doctest: +SKIP
    """
    steps = positive_int("steps", steps)
    peak_lr = finite_float("peak_lr", peak_lr, low=0.0, low_open=True)
    torch.manual_seed(seed)
    data = TextData.from_stdlib()
    model = TinyGPT(n_layer=3, n_head=4, n_embd=96, block_size=64, seed=seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=peak_lr, momentum=0.9)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    gen = torch.Generator().manual_seed(seed)
    config: dict[str, Any] = {
        "peak_lr": peak_lr,
        "warmup": warmup,
        "steps": steps,
        "optimizer": "SGD(momentum=0.9)",
    }
    pilot = Autopilot(snapshot_every=25, scheduler=schedule) if autopilot else None
    # Sharpness on a held batch every 25 steps, against (2+2*momentum)/lr.
    held = data.batch(16, 64, generator=torch.Generator().manual_seed(seed + 1))
    probe = SharpnessProbe(lambda m, b: m.loss(*b), held, every=25, preconditioned=False)
    bad = 0
    with Monitor(
        model,
        optimizer,
        run_dir,
        name=name,
        config=config,
        progress=progress,
        autopilot=pilot,
        signals=[probe],
    ) as mon:
        for _ in range(steps):
            x, y, ids = data.batch(16, 64, generator=gen, with_ids=True)
            loss = model.loss(x, y)
            loss.backward()
            optimizer.step()
            mon.step(loss, batch_ids=ids)
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            bad = bad + 1 if not math.isfinite(mon.last_record.values["loss"]) else 0
            if bad >= patience:
                break
    return load(run_dir)


def recommended_peak_lr(report: DiagnosisReport, peak_lr: float) -> float:
    """The peak learning rate the diagnosis points to: half, if its top cause calls for a
    smaller step; unchanged otherwise."""
    top = report.top
    return peak_lr * 0.5 if top is not None and top.cause in LR_CAUSES else peak_lr


def run_demo(
    out_dir: str | Path = "steadygrad-demo", steps: int = 300, progress: bool | None = None
) -> DemoResult:
    """Run the demo and write every report under ``out_dir``."""
    console = Console()
    out = Path(out_dir)
    runs: dict[str, Run] = {}

    def train(name: str, lr: float, title: str, **kwargs: Any) -> Run:
        run_dir = out / name
        if (run_dir / DB_NAME_FILE).exists():  # a previous demo's run: replace it
            shutil.rmtree(run_dir)
        console.rule(f"[bold]{name}[/]: {title}")
        run = train_tiny_gpt(run_dir, lr, steps=steps, progress=progress, name=name, **kwargs)
        print_summary(run, console)
        runs[name] = run
        return run

    train("sane", SANE_LR, f"SGD, warm-up to lr={SANE_LR}")
    unstable = train("unstable", UNSTABLE_LR, f"SGD, warm-up to lr={UNSTABLE_LR}")
    console.rule("[bold]diagnosis of the unstable run")
    report = diagnose(unstable)
    print_diagnosis(report, console)
    fixed_lr = recommended_peak_lr(report, UNSTABLE_LR)
    train("fixed", fixed_lr, f"the recommended fix: warm-up to lr={fixed_lr:g}")
    train(
        "autopilot", UNSTABLE_LR, f"warm-up to lr={UNSTABLE_LR}, with the autopilot", autopilot=True
    )
    reports = {name: write_html(run, run.run_dir / "report.html") for name, run in runs.items()}
    comparison = write_html(list(runs.values()), out / "comparison.html")
    console.rule("[bold]the story")
    console.print(story(runs))
    for name, path in reports.items():
        console.print(f"{name:>10} report: {path}")
    console.print(f"{'comparison':>10} report: {comparison}")
    return DemoResult(runs, reports, report, comparison)


def story(runs: dict[str, Run]) -> str:
    """When and where the unstable run went wrong, and how the fixed and autopiloted runs did."""
    lines = []
    unstable = runs["unstable"]
    findings = unstable.findings()
    if findings:
        first = findings[0]
        lines.append(f"The unstable run first went wrong at step {first.step}: {first.describe()}.")
        if first.batch_ids:
            lines.append(f"That step's batch (window offsets): {first.batch_ids[:6]} ...")
    else:
        lines.append("The unstable run showed no instability this time.")
    for name in ("fixed", "autopilot"):
        run = runs.get(name)
        if run is None:
            continue
        steps, loss = run.series("loss")
        finite = bool(len(loss)) and math.isfinite(loss[-1])
        ending = f"finished with loss {loss[-1]:.3f}" if finite else "did not finish cleanly"
        actions = run.actions()
        did = (
            f" after {len(actions)} autopilot action(s): "
            + ", ".join(f"{a.kind}@{a.step}" for a in actions[:6])
            if actions
            else ""
        )
        lines.append(f"The {name} run {ending} at step {steps[-1]}{did}.")
    return "\n".join(lines)
