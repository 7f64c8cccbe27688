"""The CLI's commands that read runs: ``report`` (and its live view), ``diagnose``, ``export``.

Kept apart from :mod:`steadygrad.cli` (the parser) so each command is one small function.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from steadygrad.cli import EXIT_DIAGNOSIS_FAILED, UsageError
from steadygrad.core.severity import Severity

EXPORT_KINDS = ("tensorboard", "wandb", "mlflow")


def _tty() -> bool:
    return sys.stdout.isatty()


def report(args: argparse.Namespace) -> int:
    from steadygrad.report import write_html
    from steadygrad.store import load_runs

    if args.out is not None and args.out.is_dir():
        raise UsageError(f"-o/--out: {args.out} is a directory; give the HTML file's name")
    runs = load_runs(args.runs)
    _print_summaries(runs)
    if args.no_html:
        return 0
    out = args.out or _default_report_path(args.runs, runs)
    if args.watch is None:
        write_html(runs, out, static=args.static)
        print(f"report written to {out}")
        return 0
    if args.static:
        raise UsageError("--watch draws the interactive page: drop --static")
    return _watch(args.runs, out, args.watch)


def _watch(paths, out: Path, every: float) -> int:
    """Rewrite the page every ``every`` seconds while any run is still being written."""
    from steadygrad.report import write_html
    from steadygrad.store import load_runs

    print(f"live report at {out} (every {every:g} s; Ctrl-C to stop)", flush=True)
    try:
        while True:
            runs = load_runs(paths)  # a folder may gain runs while it is watched
            live = any(r.status == "running" for r in runs)
            write_html(runs, out, refresh=every if live else None)
            for run in runs:
                run.close()
            if not live:
                print(f"no run is running any more: final report at {out}", flush=True)
                return 0
            time.sleep(every)
    except KeyboardInterrupt:
        return 0


def _default_report_path(paths, runs) -> Path:
    if len(runs) == 1:
        return runs[0].run_dir / "report.html"
    if len(paths) == 1 and Path(paths[0]).is_dir():
        return Path(paths[0]) / "report.html"
    return Path("comparison.html")


def _print_summaries(runs) -> None:
    from rich.console import Console

    from steadygrad.report.terminal import plain_summary, print_summary

    console = Console() if _tty() else None
    for run in runs:
        if console is not None:
            print_summary(run, console)
        else:
            print(plain_summary(run))


def diagnose_runs(args: argparse.Namespace) -> int:
    """Print each run's diagnosis; with ``--fail-on``, exit 4 when one reaches that severity."""
    from steadygrad.diagnose import diagnose
    from steadygrad.report.terminal import print_diagnosis
    from steadygrad.store import load_runs

    failed = False
    for run in load_runs(args.runs):
        found = diagnose(run)
        if args.json:
            data = {"run_dir": str(run.run_dir), **found.as_dict()}
            print(json.dumps(data, allow_nan=False), flush=True)
        elif _tty():
            print_diagnosis(found)
        else:
            print(found.text())
        if args.fail_on is not None:
            level = Severity.rank(args.fail_on)
            failed |= any(Severity.rank(d.severity) >= level for d in found.diagnoses)
    return EXIT_DIAGNOSIS_FAILED if failed else 0


def export(args: argparse.Namespace) -> int:
    from steadygrad.store import find_runs, load

    if args.to is None:
        if args.out is None:
            raise UsageError("export needs -o FILE (CSV or Parquet) or --to KIND DIR")
        if args.out.is_dir():
            raise UsageError(f"-o/--out: {args.out} is a directory; give the output file's name")
        fmt = args.format or args.out.suffix.lstrip(".").lower()
        if fmt not in ("csv", "parquet"):
            raise UsageError(
                f"--format must be csv or parquet (or the file end in .csv/.parquet), got {fmt!r}"
            )
        run_dirs = find_runs(args.run)
        if len(run_dirs) > 1:
            raise UsageError(f"-o writes one run; {args.run} holds {len(run_dirs)}: use --to")
        run = load(run_dirs[0])
        path = run.to_csv(args.out) if fmt == "csv" else run.to_parquet(args.out)
        print(f"wrote {path}")
        return 0
    if args.out is not None or args.format is not None:
        raise UsageError("--to replays the run into DIR: -o/--format are for CSV or Parquet")
    kind, dest = args.to[0], Path(args.to[1])
    if kind not in EXPORT_KINDS:
        raise UsageError(f"--to KIND must be one of {', '.join(EXPORT_KINDS)}, got {kind!r}")
    from steadygrad.sinks import replay

    root = Path(args.run)
    for run_dir in find_runs(root):
        run = load(run_dir)
        relative = run_dir.relative_to(root) if run_dir != root else Path()
        replay(run, [_sink(kind, dest, relative)])
        print(f"{run.name}: replayed into {kind} at {dest}")
    return 0


def _sink(kind: str, dest: Path, relative: Path):
    from steadygrad.sinks import MLflowSink, TensorBoardSink, WandbSink

    if kind == "tensorboard":
        return TensorBoardSink(dest / relative)  # one folder per run: TensorBoard's own layout
    if kind == "wandb":
        return WandbSink(dir=dest, mode="offline")
    return MLflowSink(dest)
