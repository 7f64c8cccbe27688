"""The command line: ``steadygrad report|demo|diagnose|study|export ...``.

Every failure prints one or two lines naming the file and what is wrong, never a traceback
(set ``STEADYGRAD_TRACEBACK=1`` to see one). Exit codes: 0 success, 1 a run that is missing or
cannot be read (or an output that cannot be written, or a Ray cluster that does not answer),
2 bad arguments, 3 a missing optional dependency (the message gives the pip command), 4
``diagnose --fail-on LEVEL`` found a diagnosis at LEVEL or above, 130 interrupted.

Every command that takes a run also takes a folder of runs: each run found below it (a folder
holding ``run.db``) is used, like TensorBoard's ``--logdir``. When stdout is not a terminal,
tables are printed as plain tab-separated columns (``diagnose --json``: one JSON object per run
per line), so logs and pipes are never wrapped.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}

EXIT_OK, EXIT_UNREADABLE, EXIT_BAD_ARGUMENTS, EXIT_MISSING_DEPENDENCY = 0, 1, 2, 3
EXIT_DIAGNOSIS_FAILED = 4  # diagnose --fail-on LEVEL found a diagnosis at LEVEL or above
EXIT_INTERRUPTED = 130

# The extra that installs each optional dependency the CLI can need.
EXTRAS = {
    "matplotlib": "plots",
    "pyarrow": "parquet",
    "pandas": "all",
    "sklearn": "data",
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "mlflow": "mlflow",
}


class UsageError(ValueError):
    """A command-line argument that cannot work (exit 2)."""


def command(name: str):
    def register(fn: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = fn
        return fn

    return register


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steadygrad",
        description="See training instabilities coming, name their cause, and fix them.",
        epilog="Record a run with steadygrad.Monitor in your training loop, then "
        "'steadygrad report RUN_DIR'.",
    )
    from steadygrad import __version__

    parser.add_argument("--version", action="version", version=f"steadygrad {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "report",
        help="summarise recorded runs and write an HTML report",
        description="Print a summary of each run and write a self-contained "
        "HTML report (one run, or a comparison of several).",
    )
    _add_report_arguments(p)

    p = sub.add_parser(
        "demo",
        help="train TinyGPT sanely and unstably, and report both",
        description="Train the built-in TinyGPT twice on standard-library text "
        "(once at a sane learning rate, once warming up to an unstable one), "
        "record both, say where the unstable one went wrong, and write reports.",
    )
    p.add_argument(
        "-o",
        "--out",
        type=Path,
        default=Path("steadygrad-demo"),
        help="output directory (default: ./steadygrad-demo)",
    )
    p.add_argument("--steps", type=_positive_int, default=300, help="steps per run (default 300)")
    p.add_argument("--no-progress", action="store_true", help="no live progress line")

    p = sub.add_parser(
        "diagnose",
        help="name the causes behind a run's findings, and the fixes",
        description="Rank the likely causes of a run's instabilities, with the evidence, the "
        "fixes as steadygrad calls, and the published result each rests on.",
    )
    _add_diagnose_arguments(p)

    p = sub.add_parser(
        "study",
        help="run a reproducible experiment that checks steadygrad against a published result",
        description="Reproducible experiments; each writes its results, a plot and a table to "
        "its output directory (default: studies/NAME).",
    )
    studies = p.add_subparsers(dest="study", metavar="STUDY", required=True)
    s = studies.add_parser(
        "lr-sensitivity",
        help="final loss against learning rate, with and without qk-norm and z-loss",
        description="Wortsman et al. 2023: train TinyGPT at several sizes over a range of "
        "learning rates, with and without the mitigations (qk-norm, z-loss); report the final "
        "loss against the learning rate and the LR sensitivity of each configuration. Runs its "
        "grid on Ray Tune (local Ray unless --address names a cluster); each run is recorded "
        "in OUT/runs/, and an interrupted sweep resumes where it stopped.",
    )
    s.add_argument("-o", "--out", type=Path, default=Path("studies/lr-sensitivity"))
    s.add_argument("--sizes", nargs="+", default=None, help="model sizes (default: xs s m)")
    s.add_argument("--lrs", nargs="+", type=float, default=None, help="learning rates")
    s.add_argument("--steps", type=_positive_int, default=None, help="training steps per run")
    s.add_argument("--workers", type=_positive_int, default=None, help="runs at once")
    s.add_argument(
        "--address",
        default=None,
        help="an existing Ray cluster (host:port, ray://host:port or auto); default: local Ray",
    )
    s.add_argument("--no-mitigations", action="store_true", help="baseline runs only")

    s = studies.add_parser(
        "edge-of-stability",
        help="full-batch GD: sharpness rises to 2/lr and hovers there",
        description="Cohen et al. 2021: full-batch gradient descent on a small network at "
        "several step sizes; sharpness rises until it reaches 2/lr and then hovers there while "
        "the loss keeps falling non-monotonically. Reports, per step size, the ratio of "
        "sharpness to 2/lr over the last part of training.",
    )
    s.add_argument("-o", "--out", type=Path, default=Path("studies/edge-of-stability"))
    s.add_argument("--step-sizes", nargs="+", type=float, default=None)
    s.add_argument("--steps", type=_positive_int, default=None)
    s.add_argument("--probe-every", type=_positive_int, default=None)
    s.add_argument(
        "--optimizer",
        choices=("gd", "adam"),
        default=None,
        help="gd (sharpness vs 2/lr) or adam (preconditioned sharpness vs 38/lr, Cohen et al. "
        "2022); default gd",
    )
    s = studies.add_parser(
        "grokking",
        help="softmax collapse stalls grokking; StableMax and ⊥Grad fix it",
        description="Prieto et al. 2025: modular addition with a small network. With float32 "
        "softmax and no regularisation the run shows softmax collapse and stalls; with ⊥Grad "
        "(or StableMax) it generalises. Reports the steps to generalise per variant.",
    )
    s.add_argument("-o", "--out", type=Path, default=Path("studies/grokking"))
    s.add_argument("--modulus", type=_positive_int, default=None)
    s.add_argument("--train-fraction", type=float, default=None)
    s.add_argument("--steps", type=_positive_int, default=None)
    s.add_argument("--variants", nargs="+", default=None)
    s = studies.add_parser(
        "attention-logits",
        help="TinyGPT at a high learning rate with and without QK-norm",
        description="Wortsman et al. 2023: at a high learning rate the attention logits of a "
        "plain TinyGPT grow until the detector fires; with QK-norm they stay small and the "
        "model reaches a lower loss.",
    )
    s.add_argument("-o", "--out", type=Path, default=Path("studies/attention-logits"))
    s.add_argument("--lr", type=float, default=None)
    s.add_argument("--steps", type=_positive_int, default=None)

    s = studies.add_parser(
        "gradient-coherence",
        help="per-example gradients agree with real labels, not with random ones",
        description="Chatterjee 2020: an MLP on digits with real and with random labels; the "
        "m-coherence of per-example gradients is high with real labels while the loss falls, "
        "near 1 (orthogonal) with random labels, and falls as the network memorises.",
    )
    s.add_argument("-o", "--out", type=Path, default=Path("studies/gradient-coherence"))
    s.add_argument("--steps", type=_positive_int, default=None)
    s.add_argument("--samples", type=_positive_int, default=None)
    s = studies.add_parser(
        "noise-scale",
        help="the gradient noise scale grows as the loss falls",
        description="McCandlish et al. 2018: B_simple = tr(Sigma)/|G|^2 measured along SGD "
        "training of a digits MLP, from per-example gradients and from two batch sizes.",
    )
    s.add_argument("-o", "--out", type=Path, default=Path("studies/noise-scale"))
    s.add_argument("--steps", type=_positive_int, default=None)
    s = studies.add_parser(
        "top-subspace",
        help="the gradient lies in the top-10 Hessian eigenspace after a transient",
        description="Gur-Ari et al. 2018: the share of the gradient in the span of the top-k "
        "Hessian eigenvectors (k = 10 classes) of a digits classifier, and the overlap of that "
        "span between probes.",
    )
    s.add_argument("-o", "--out", type=Path, default=Path("studies/top-subspace"))
    s.add_argument("--steps", type=_positive_int, default=None)
    s.add_argument("--k", type=_positive_int, default=None)
    s.add_argument("--loss", choices=("square", "cross_entropy"), default=None)
    s.add_argument("--lr", type=float, default=None)
    s.add_argument("--hidden", type=_positive_int, default=None)
    s.add_argument("--batch-size", type=_positive_int, default=None)
    s.add_argument("--probe-examples", type=_positive_int, default=None)
    s = studies.add_parser(
        "loss-landscape",
        help="1-D and 2-D loss slices of a small-batch (flat) and a full-batch (sharp) solution",
        description="Li et al. 2018: filter-normalised slices of the training loss around the "
        "solutions SGD finds with a small and with the full batch.",
    )
    s.add_argument("-o", "--out", type=Path, default=Path("studies/loss-landscape"))
    s.add_argument("--steps", type=_positive_int, default=None)
    s.add_argument("--lr", type=float, default=None)
    s.add_argument("--loss", choices=("square", "cross_entropy"), default=None)
    s = studies.add_parser(
        "signal-propagation",
        help="the order-to-chaos transition of deep tanh networks at initialisation",
        description="Poole et al. 2016, Schoenholz et al. 2017: per-layer gradient growth of "
        "deep random tanh MLPs against sigma_w^2, crossing 1 at the mean-field critical value.",
    )
    s.add_argument("-o", "--out", type=Path, default=Path("studies/signal-propagation"))
    s.add_argument("--weight-variances", nargs="+", type=float, default=None)
    s.add_argument("--depth", type=_positive_int, default=None)
    s.add_argument("--width", type=_positive_int, default=None)
    s = studies.add_parser(
        "sgd-trace",
        help="SGD's Hessian trace settles at or below 2/lr; GD bounds only the top eigenvalue",
        description="Wu et al. 2018, Wu and Su 2023: small-batch SGD and full-batch GD at the "
        "same learning rate, with the Hessian trace and sharpness against 2/lr in the Monitor.",
    )
    s.add_argument("-o", "--out", type=Path, default=Path("studies/sgd-trace"))
    s.add_argument("--lr", type=float, default=None)
    s.add_argument("--steps", type=_positive_int, default=None)
    s.add_argument("--model", choices=("diagonal", "mlp"), default=None)
    s = studies.add_parser(
        "stability-gap",
        help="class-incremental digits: old tasks drop after each switch and partly recover",
        description="De Lange et al. 2023: train an MLP on digits split into tasks of two "
        "classes, evaluating every task at every step, with 0 to 32 replayed examples per batch. "
        "Reports the drop of earlier tasks right after each task switch (the stability gap), "
        "what evaluating only at task boundaries shows, min-ACC and WC-ACC.",
    )
    s.add_argument("-o", "--out", type=Path, default=Path("studies/stability-gap"))
    s.add_argument("--steps-per-task", type=_positive_int, default=None)
    s.add_argument("--replay-sizes", nargs="+", type=int, default=None)
    s.add_argument("--lr", type=float, default=None)
    s = studies.add_parser(
        "gradient-estimators",
        help="forward gradient, DFA, Forward-Forward and ReSTE against backprop on digits",
        description="Train an MLP on digits with each gradient estimator and with backprop; "
        "report the cosine and norm ratio of each estimator's update against the true gradient "
        "over training, the accuracy reached, the forward gradient's alignment against the "
        "number of parameters, and Forward-Forward's layer-local goodness.",
    )
    s.add_argument("-o", "--out", type=Path, default=Path("studies/gradient-estimators"))
    s.add_argument("--steps", type=_positive_int, default=None)
    s.add_argument("--estimators", nargs="+", default=None)

    p = sub.add_parser(
        "export",
        help="export a run's scalars to CSV or Parquet, or replay it to TensorBoard, W&B, MLflow",
        description="Write a run's scalars in long form (step, name, value, wall) with -o, or "
        "replay the run (values, findings, actions, diagnosis) into TensorBoard event files, an "
        "offline W&B run or an MLflow file store with --to.",
    )
    _add_export_arguments(p)
    return parser


def _add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_DIR",
        help="run directory (holds run.db) or a folder of runs",
    )
    p.add_argument(
        "-o",
        "--out",
        type=Path,
        default=None,
        help="HTML file to write (default: RUN_DIR/report.html for one run, FOLDER/report.html "
        "for a folder of runs, else ./comparison.html)",
    )
    p.add_argument("--no-html", action="store_true", help="only print the terminal summary")
    p.add_argument(
        "--static", action="store_true", help="a page of PNG plots, no JavaScript (matplotlib)"
    )
    p.add_argument(
        "--watch",
        nargs="?",
        type=_positive_float,
        const=5.0,
        default=None,
        metavar="SECONDS",
        help="live view: rewrite the report every SECONDS (default 5) while a run is being "
        "written; the page reloads itself. Stops when no run is running, or on Ctrl-C",
    )


def _add_diagnose_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directory or a folder of runs")
    p.add_argument(
        "--json",
        action="store_true",
        help="print each run's diagnoses, evidence, fixes and margins as one JSON object per line",
    )
    p.add_argument(
        "--fail-on",
        choices=("warning", "critical"),
        default=None,
        help="exit with status 4 when any run has a diagnosis at this severity or above",
    )


def _add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN_DIR", help="run directory or a folder of runs")
    p.add_argument("-o", "--out", type=Path, default=None, help="output file (CSV or Parquet)")
    p.add_argument(
        "--format",
        choices=("csv", "parquet"),
        default=None,
        help="default: from the output file's suffix",
    )
    p.add_argument(
        "--to",
        nargs=2,
        default=None,
        metavar=("KIND", "DIR"),
        help="replay the run into DIR as KIND: tensorboard (event files), wandb (an offline "
        "run) or mlflow (a file store); a folder of runs gives one TensorBoard folder or one "
        "W&B/MLflow run each",
    )


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


@command("report")
def _report(args: argparse.Namespace) -> int:
    from steadygrad.cli_views import report

    return report(args)


@command("demo")
def _demo(args: argparse.Namespace) -> int:
    from steadygrad.demo import run_demo

    run_demo(args.out, steps=args.steps, progress=False if args.no_progress else None)
    return 0


@command("diagnose")
def _diagnose(args: argparse.Namespace) -> int:
    from steadygrad.cli_views import diagnose_runs

    return diagnose_runs(args)


@command("study")
def _study(args: argparse.Namespace) -> int:
    runner = STUDIES[args.study]
    runner(args)
    return 0


def _given(args: argparse.Namespace, *names: str) -> dict:
    """The options the user set on the command line (the study's defaults apply to the rest)."""
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def _lr_sensitivity(args: argparse.Namespace) -> None:
    from steadygrad.studies.lr_sensitivity import run_lr_sensitivity

    options = _given(args, "sizes", "lrs", "steps", "workers", "address")
    run_lr_sensitivity(args.out, mitigations=not args.no_mitigations, **options)


def _edge_of_stability(args: argparse.Namespace) -> None:
    from steadygrad.studies.edge_of_stability import run_edge_of_stability

    options = _given(args, "step_sizes", "steps", "probe_every", "optimizer")
    Console().print(run_edge_of_stability(args.out, **options).ratios())


def _grokking(args: argparse.Namespace) -> None:
    from steadygrad.studies.grokking import run_grokking

    options = _given(args, "modulus", "train_fraction", "steps", "variants")
    Console().print(run_grokking(args.out, **options).summary())


def _attention_logits(args: argparse.Namespace) -> None:
    from steadygrad.studies.attention_logits import run_attention_logits

    Console().print(run_attention_logits(args.out, **_given(args, "lr", "steps")).summary())


def _gradient_coherence(args: argparse.Namespace) -> None:
    from steadygrad.studies.gradient_coherence import run_gradient_coherence

    run_gradient_coherence(args.out, **_given(args, "steps", "samples"))


def _noise_scale(args: argparse.Namespace) -> None:
    from steadygrad.studies.noise_scale import run_noise_scale

    run_noise_scale(args.out, **_given(args, "steps"))


def _top_subspace(args: argparse.Namespace) -> None:
    from steadygrad.studies.top_subspace import run_top_subspace

    options = _given(args, "steps", "k", "loss", "lr", "hidden", "batch_size", "probe_examples")
    run_top_subspace(args.out, **options)


def _loss_landscape(args: argparse.Namespace) -> None:
    from steadygrad.studies.loss_landscape import run_loss_landscape

    run_loss_landscape(args.out, **_given(args, "steps", "lr", "loss"))


def _signal_propagation(args: argparse.Namespace) -> None:
    from steadygrad.studies.signal_propagation import run_signal_propagation

    run_signal_propagation(args.out, **_given(args, "weight_variances", "depth", "width"))


def _sgd_trace(args: argparse.Namespace) -> None:
    from steadygrad.studies.sgd_trace import run_sgd_trace

    run_sgd_trace(args.out, **_given(args, "lr", "steps", "model"))


def _stability_gap(args: argparse.Namespace) -> None:
    from steadygrad.studies.stability_gap import run_stability_gap

    options = _given(args, "steps_per_task", "replay_sizes", "lr")
    Console().print(run_stability_gap(args.out, progress=False, **options).summary())


def _gradient_estimators(args: argparse.Namespace) -> None:
    from steadygrad.studies.gradient_estimators import run_gradient_estimators

    options = _given(args, "steps", "estimators")
    Console().print(run_gradient_estimators(args.out, progress=False, **options).summary())


STUDIES: dict[str, Callable[[argparse.Namespace], None]] = {
    "lr-sensitivity": _lr_sensitivity,
    "edge-of-stability": _edge_of_stability,
    "grokking": _grokking,
    "attention-logits": _attention_logits,
    "gradient-coherence": _gradient_coherence,
    "noise-scale": _noise_scale,
    "top-subspace": _top_subspace,
    "loss-landscape": _loss_landscape,
    "signal-propagation": _signal_propagation,
    "sgd-trace": _sgd_trace,
    "stability-gap": _stability_gap,
    "gradient-estimators": _gradient_estimators,
}


@command("export")
def _export(args: argparse.Namespace) -> int:
    from steadygrad.cli_views import export

    return export(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with argparse's own message on bad arguments
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_ARGUMENTS
    try:
        return COMMANDS[args.command](args)
    except Exception as exc:
        if os.environ.get("STEADYGRAD_TRACEBACK"):
            raise
        code, message = _explain(exc)
        print(f"steadygrad {args.command}: {message}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print(f"steadygrad {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _explain(exc: Exception) -> tuple[int, str]:
    """The exit code and a one- or two-line message for an error that ended a command."""
    from steadygrad.store import UnreadableRunError

    if isinstance(exc, ImportError):
        module = (exc.name or "").partition(".")[0]
        if "pip install" in str(exc):
            return EXIT_MISSING_DEPENDENCY, str(exc)
        extra = EXTRAS.get(module)
        fix = f"pip install 'steadygrad[{extra}]'" if extra else f"pip install {module}"
        return EXIT_MISSING_DEPENDENCY, f"this needs the optional package {module!r}: {fix}"
    if isinstance(exc, FileNotFoundError | UnreadableRunError):
        return EXIT_UNREADABLE, str(exc)
    if isinstance(exc, UsageError):
        return EXIT_BAD_ARGUMENTS, str(exc)
    if isinstance(exc, OSError):  # reading a run or writing an output
        where = f"{exc.filename}: " if exc.filename else ""
        return EXIT_UNREADABLE, f"{where}{exc.strerror or exc}"
    if isinstance(exc, sqlite3.Error):
        return EXIT_UNREADABLE, f"a run database cannot be read: {exc}"
    if isinstance(exc, ValueError | TypeError):
        return EXIT_BAD_ARGUMENTS, str(exc)
    return EXIT_UNREADABLE, (
        f"unexpected {type(exc).__name__}: {exc}\n"
        "set STEADYGRAD_TRACEBACK=1 to see where, and please report it"
    )


if __name__ == "__main__":
    sys.exit(main())
