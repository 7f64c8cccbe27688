"""Study: the stability gap (De Lange et al. 2023) on class-incremental digits, with and without
replay, recorded by a real Monitor and read back as a user would.

Setup: scikit-learn's 8x8 digits split into tasks of consecutive classes (``0-1``, ``2-3``, ...),
one shared 10-way head (class-incremental), an MLP, plain SGD. Each task is trained for
``steps_per_task`` steps; :class:`~steadygrad.continual.ContinualEvaluation` evaluates every
task seen so far on fixed held-out subsets every ``eval_every`` steps.
Variants, by the number of replayed examples added to each batch of ``batch_size`` new ones:

- ``no_replay`` (0): fine-tune on the new task only. Earlier tasks collapse after the switch and
  do not come back (catastrophic forgetting).
- ``replay_N``: experience replay (Chaudhry et al. 2019): N examples drawn from a memory of
  earlier tasks join every batch. Earlier tasks still drop sharply in the first steps on a new
  task, then recover most of it: the stability gap, which evaluating only at task boundaries
  misses. The more replay, the shallower the drop.

Each run is checked through ``steadygrad.load`` and ``steadygrad.diagnose``: the replay run
must be diagnosed with a ``stability_gap``.

Example:
    >>> result = run_stability_gap("studies/stability-gap", progress=False)  # doctest: +SKIP
    >>> result.mean_gap_size  # doctest: +SKIP
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from steadygrad.continual import ContinualEvaluation, GapTracker
from steadygrad.continual.metrics import MIN_ACCURACY, TASK, TASK_ACCURACY, WORST_CASE_ACCURACY
from steadygrad.core.checks import finite_float, positive_int
from steadygrad.data.digits import load_digits
from steadygrad.diagnose.detectors.continual import STABILITY_GAP_FOUND
from steadygrad.models.mlp import MLP
from steadygrad.studies._results import save_result
from steadygrad.studies._threads import on_cpu_threads


@dataclass
class StabilityGapResult:
    """Per variant: the per-task accuracy curves read back from the run store, and the numbers.

    ``gaps[v]``: one dict per (earlier task, switch): ``size`` (accuracy just before the switch
    minus the lowest after it), ``steps_to_minimum``, ``length`` (steps until half the drop was
    won back, None if never) and ``recovered`` (accuracy points won back by the end of the task).
    ``boundary_drop[v]``: the mean drop seen by evaluating only at task boundaries.
    ``diagnoses[v]``: the causes ``steadygrad.diagnose`` named for the run.
    """

    config: dict
    steps: dict[str, list[int]] = field(default_factory=dict)
    task_index: dict[str, list[float]] = field(default_factory=dict)
    accuracy: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    gaps: dict[str, list[dict]] = field(default_factory=dict)
    mean_gap_size: dict[str, float] = field(default_factory=dict)
    boundary_drop: dict[str, float] = field(default_factory=dict)
    mean_recovered: dict[str, float] = field(default_factory=dict)
    final_average_accuracy: dict[str, float] = field(default_factory=dict)
    min_accuracy: dict[str, float] = field(default_factory=dict)
    worst_case_accuracy: dict[str, float] = field(default_factory=dict)
    diagnoses: dict[str, list[str]] = field(default_factory=dict)
    run_dirs: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    plot_path: Path | None = None

    def claims(self) -> dict[str, bool]:
        """The paper's qualitative results, checked on this run (replay variants only, in the
        order of ``replay_sizes``)."""
        replayed = [v for v in self.steps if v != "no_replay"]
        sizes = [self.mean_gap_size[v] for v in self.steps]
        return {
            "drop_hidden_at_task_boundaries": all(
                self.mean_gap_size[v] > 2 * self.boundary_drop[v] for v in replayed
            ),
            "drop_partly_recovered": all(
                self.mean_recovered[v] > 0.5 * self.mean_gap_size[v] for v in replayed
            ),
            "more_replay_smaller_drop": all(
                a > b for a, b in zip(sizes[:-1], sizes[1:], strict=True)
            ),
            "diagnosed_as_stability_gap": all(
                STABILITY_GAP_FOUND.name in self.diagnoses[v] for v in replayed
            ),
        }

    def summary(self) -> str:
        lines = [f"stability-gap study: {self.config}"]
        for v in self.steps:
            lines.append(
                f"  {v:10s} mean drop after a switch {self.mean_gap_size[v]:.3f} "
                f"(seen at task boundaries only: {self.boundary_drop[v]:.3f}), "
                f"won back {self.mean_recovered[v]:.3f}; final ACC "
                f"{self.final_average_accuracy[v]:.3f}, min-ACC {self.min_accuracy[v]:.3f}, "
                f"WC-ACC {self.worst_case_accuracy[v]:.3f}; diagnosed: "
                f"{', '.join(self.diagnoses[v]) or 'healthy'} ({self.seconds[v]:.0f} s)"
            )
        lines.append("  claims: " + ", ".join(f"{k} {v}" for k, v in self.claims().items()))
        return "\n".join(lines)


def class_incremental_digits(
    classes_per_task: int = 2, seed: int = 0
) -> tuple[
    dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, tuple[torch.Tensor, torch.Tensor]]
]:
    """Digits split into tasks of consecutive classes: ``(train, test)``, each ``{name: (x, y)}``.

    Example:
        >>> train, test = class_incremental_digits(5)
        >>> list(train)
        ['0-4', '5-9']
    """
    classes_per_task = positive_int("classes_per_task", classes_per_task)
    if 10 % classes_per_task:
        raise ValueError(f"classes_per_task must divide 10, got {classes_per_task}")
    x_train, y_train, x_test, y_test = load_digits(test_fraction=0.3, seed=seed)
    train, test = {}, {}
    for first in range(0, 10, classes_per_task):
        last = first + classes_per_task - 1
        name = f"{first}-{last}" if last > first else str(first)
        keep_train = (y_train >= first) & (y_train <= last)
        keep_test = (y_test >= first) & (y_test <= last)
        train[name] = (x_train[keep_train], y_train[keep_train])
        test[name] = (x_test[keep_test], y_test[keep_test])
    return train, test


@on_cpu_threads
def run_stability_gap(
    out_dir: str | Path,
    classes_per_task: int = 2,
    steps_per_task: int = 150,
    batch_size: int = 32,
    replay_sizes: Sequence[int] = (0, 4, 16, 32),
    lr: float = 0.1,
    hidden: Sequence[int] = (128, 128),
    eval_every: int = 1,
    subset: int = 200,
    min_drop: float = 0.1,
    seed: int = 0,
    progress: bool = True,
    plot: bool = True,
    num_threads: int | None = 1,
) -> StabilityGapResult:
    """Train each variant through the task sequence with a Monitor; write ``stability_gap.json``
    (and ``stability_gap.png``) and one run directory per variant under ``out_dir``.

    Default size: 5 tasks x 150 SGD steps, evaluation every step: a few seconds per variant on
    one CPU thread.

    Example:
        >>> result = run_stability_gap("out", steps_per_task=60, progress=False)  # doctest: +SKIP
    """
    import steadygrad

    steps_per_task = positive_int("steps_per_task", steps_per_task)
    batch_size = positive_int("batch_size", batch_size)
    if not replay_sizes:
        raise ValueError("replay_sizes must hold at least one number of replayed examples")
    for n in replay_sizes:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"replay_sizes must hold ints >= 0, got {list(replay_sizes)}")
    lr = finite_float("lr", lr, low=0.0, low_open=True)
    eval_every = positive_int("eval_every", eval_every)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train, test = class_incremental_digits(classes_per_task, seed)
    config = dict(
        tasks=list(train),
        steps_per_task=steps_per_task,
        batch_size=batch_size,
        replay_sizes=list(replay_sizes),
        lr=lr,
        hidden=list(hidden),
        eval_every=eval_every,
        subset=subset,
        optimizer="SGD",
        seed=seed,
    )
    result = StabilityGapResult(config=config)
    for replay_size in replay_sizes:
        variant = f"replay_{replay_size}" if replay_size else "no_replay"
        start = time.perf_counter()
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed + 1)
        model = MLP(64, list(hidden), 10)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        evaluator = ContinualEvaluation(test, every=eval_every, subset=subset, seed=seed)
        run_dir = out_dir / variant
        if run_dir.exists():
            shutil.rmtree(run_dir)  # a rerun of the study replaces its own earlier runs
        memory_x: list[torch.Tensor] = []
        memory_y: list[torch.Tensor] = []
        with steadygrad.watch(
            model,
            optimizer,
            run_dir,
            signals=[evaluator],
            progress=False,
            config={"study": "stability-gap", "variant": variant, **config},
        ) as mon:
            for name, (x_task, y_task) in train.items():
                evaluator.start_task(name)
                for _ in range(steps_per_task):
                    idx = torch.randint(len(x_task), (batch_size,), generator=generator)
                    x, y = x_task[idx], y_task[idx]
                    if replay_size and memory_x:
                        mx, my = torch.cat(memory_x), torch.cat(memory_y)
                        ridx = torch.randint(len(mx), (replay_size,), generator=generator)
                        x, y = torch.cat([x, mx[ridx]]), torch.cat([y, my[ridx]])
                    loss = F.cross_entropy(model(x), y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    mon.step(loss)
                memory_x.append(x_task)
                memory_y.append(y_task)
                if progress:
                    acc, _ = evaluator.evaluate(model)
                    shown = " ".join(f"{k}:{v:.2f}" for k, v in acc.items())
                    print(f"[stability-gap:{variant}] after task {name}: {shown}", flush=True)
        _read_back(result, variant, run_dir, min_drop)
        result.seconds[variant] = time.perf_counter() - start
    return save_result(result, out_dir, "stability_gap", _plot, plot, progress)


def _read_back(result: StabilityGapResult, variant: str, run_dir: Path, min_drop: float) -> None:
    """Everything the result says about a run, read from its store as a user would."""
    import steadygrad

    run = steadygrad.load(run_dir)
    steps, task = run.series(TASK.name)
    accuracy = {}
    for name, (s, values) in run.family(TASK_ACCURACY.name).items():
        full = np.full(len(steps), np.nan)
        full[np.searchsorted(steps, s)] = values
        accuracy[name] = full
    tracker = GapTracker(min_drop=min_drop)
    for i, step in enumerate(steps):
        tracker.update(int(step), float(task[i]), {n: float(a[i]) for n, a in accuracy.items()})
    gaps = [g.as_evidence() for g in tracker.gaps]
    result.steps[variant] = [int(s) for s in steps]
    result.task_index[variant] = [float(t) for t in task]
    result.accuracy[variant] = {n: [float(v) for v in a] for n, a in accuracy.items()}
    result.gaps[variant] = gaps
    result.mean_gap_size[variant] = float(np.mean([g["size"] for g in gaps]))
    result.mean_recovered[variant] = float(np.mean([g["recovered"] for g in gaps]))
    result.boundary_drop[variant] = _boundary_drop(steps, task, accuracy)
    last = {n: a[-1] for n, a in accuracy.items()}
    result.final_average_accuracy[variant] = float(np.mean(list(last.values())))
    result.min_accuracy[variant] = float(run.series(MIN_ACCURACY.name)[1][-1])
    result.worst_case_accuracy[variant] = float(run.series(WORST_CASE_ACCURACY.name)[1][-1])
    result.diagnoses[variant] = steadygrad.diagnose(run).causes()
    result.run_dirs[variant] = str(run_dir)
    run.close()


def _boundary_drop(steps: np.ndarray, task: np.ndarray, accuracy: dict[str, np.ndarray]) -> float:
    """The mean drop of earlier tasks from one task boundary to the next: all that evaluating
    only at the ends of tasks would show."""
    ends = [i for i in range(len(steps) - 1) if task[i + 1] != task[i]] + [len(steps) - 1]
    drops = []
    for a, b in zip(ends[:-1], ends[1:], strict=True):
        for values in accuracy.values():
            if math.isfinite(values[a]):
                drops.append(values[a] - values[b])
    return float(np.mean(drops)) if drops else math.nan


def _plot(result: StabilityGapResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(result.steps)
    fig, axes = plt.subplots(len(variants), 1, figsize=(8, 3 * len(variants)), sharex=True)
    axes = np.atleast_1d(axes)
    for ax, v in zip(axes, variants, strict=True):
        steps = np.asarray(result.steps[v])
        task = np.asarray(result.task_index[v])
        for i, (name, acc) in enumerate(result.accuracy[v].items()):
            ax.plot(steps, acc, color=f"C{i}", lw=1, label=f"task {name}")
        for s in steps[1:][np.diff(task) != 0]:
            ax.axvline(s, color="grey", lw=0.8, ls="--")
        ax.set_ylabel("accuracy")
        ax.set_title(
            f"{v}: mean drop {result.mean_gap_size[v]:.2f}, min-ACC {result.min_accuracy[v]:.2f}"
        )
        ax.legend(fontsize=7, ncol=5, loc="lower left")
    axes[-1].set_xlabel("step (dashed: task switches)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
