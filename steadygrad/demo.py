"""The demo: TinyGPT trained twice on standard-library text, once sanely and once with a
learning-rate warm-up to a peak high enough to become unstable; both recorded and reported."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from steadygrad._checks import positive_int
from steadygrad.data import TextData
from steadygrad.models import TinyGPT
from steadygrad.monitor import Monitor
from steadygrad.report import print_summary, write_html
from steadygrad.store import DB_NAME_FILE, Run, load

SANE_LR = 0.2
UNSTABLE_LR = 2.0


@dataclass
class DemoRun:
    run: Run
    report: Path


def train_tiny_gpt(
    run_dir: str | Path,
    peak_lr: float,
    steps: int = 300,
    warmup: int = 250,
    seed: int = 0,
    progress: bool | None = None,
    patience: int = 10,
) -> Run:
    """Train a 3-layer TinyGPT with SGD (momentum 0.9) and a linear warm-up to ``peak_lr``,
    recorded by a Monitor in ``run_dir``. Stops after ``patience`` non-finite losses in a row."""
    steps = positive_int("steps", steps)
    torch.manual_seed(seed)
    data = TextData.from_stdlib()
    model = TinyGPT(n_layer=3, n_head=4, n_embd=96, block_size=64, seed=seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=peak_lr, momentum=0.9)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    gen = torch.Generator().manual_seed(seed)
    config = {
        "peak_lr": peak_lr,
        "warmup": warmup,
        "steps": steps,
        "optimizer": "SGD(momentum=0.9)",
    }
    bad = 0
    with Monitor(model, optimizer, run_dir, config=config, progress=progress) as mon:
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


def run_demo(
    out_dir: str | Path = "steadygrad-demo", steps: int = 300, progress: bool | None = None
) -> dict[str, DemoRun]:
    """Run the demo and write both reports under ``out_dir``; returns the runs by name."""
    console = Console()
    out = Path(out_dir)
    results: dict[str, DemoRun] = {}
    for name, lr in (("sane", SANE_LR), ("unstable", UNSTABLE_LR)):
        run_dir = out / name
        if (run_dir / DB_NAME_FILE).exists():  # a previous demo's run: replace it
            shutil.rmtree(run_dir)
        console.rule(f"[bold]{name}[/]: SGD, warm-up to lr={lr}")
        run = train_tiny_gpt(run_dir, lr, steps=steps, progress=progress)
        print_summary(run, console)
        report = write_html(run, run_dir / "report.html")
        results[name] = DemoRun(run, report)
    console.rule("[bold]what went wrong in the unstable run")
    console.print(explain(results["unstable"].run))
    for name, result in results.items():
        console.print(f"{name} report: {result.report}")
    return results


def explain(run: Run) -> str:
    """A few sentences on when and where a run first went wrong, from its findings."""
    findings = run.findings()
    if not findings:
        return "No instability was detected."
    first = findings[0]
    lines = [f"It first went wrong at step {first.step}: {first.describe()}."]
    if first.batch_ids:
        lines.append(f"That step's batch (window offsets): {first.batch_ids[:8]}...")
    nonfinite = [f for f in findings if f.kind in ("nonfinite", "nonfinite_origin")]
    if nonfinite:
        f = nonfinite[0]
        lines.append(f"The loss or gradients became non-finite at step {f.step}.")
        origin = next((g for g in nonfinite if g.where), None)
        if origin:
            lines.append(
                f"The first non-finite value was produced in: {origin.where} (step {origin.step})."
            )
    lr_names = [n for n in run.names() if n.startswith("lr/")]
    if lr_names:
        steps, lrs = run.series(lr_names[0])
        at = lrs[steps.searchsorted(first.step)] if first.step <= steps[-1] else lrs[-1]
        lines.append(f"The learning rate was {at:.3g} there (peak {lrs.max():.3g}).")
    return "\n".join(lines)
