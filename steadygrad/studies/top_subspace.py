"""Study: gradient descent happens in a tiny subspace (Gur-Ari, Roberts, Dyer 2018).

A small MLP classifier on scikit-learn's digits (10 classes, square loss on one-hot targets)
is trained by minibatch SGD at a large step size with a
:class:`~steadygrad.dynamics.TopSubspaceProbe` (k = 10) in the Monitor; Hessian and gradient are
those of the whole training set. The published picture: after a short transient, most of the
gradient (over 90%) lies in the span of the top-k Hessian eigenvectors, k the number of classes,
and that span changes little from one probe to the next. Digits is fitted within a few epochs;
once the training loss is near zero the gradient comes from a few remaining examples and its
share in the top subspace drops (to 0.7-0.85 here), so the default run covers the learning phase.

Example:
    >>> result = run_top_subspace("out", steps=600, progress=False)  # doctest: +SKIP
    >>> result.mean_fraction_after_transient  # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from steadygrad.core.checks import finite_float, positive_int
from steadygrad.dynamics.subspace import (
    GRADIENT_TOP_SUBSPACE_FRACTION,
    TOP_SUBSPACE_MATVECS,
    TOP_SUBSPACE_OVERLAP,
    TopSubspaceProbe,
)
from steadygrad.models import MLP
from steadygrad.studies._monitored import (
    cross_entropy,
    digits_subset,
    square_loss,
    train_monitored,
)
from steadygrad.studies._results import save_result
from steadygrad.studies._threads import on_cpu_threads

_LOSSES = {"square": square_loss, "cross_entropy": cross_entropy}


@dataclass
class TopSubspaceStudyResult:
    """Probed steps, the gradient's share in the top-k eigenspace, the overlap with the previous
    probe's eigenspace, and their means after the first ``transient`` fraction of training."""

    config: dict
    steps: list[int]
    fraction: list[float]
    overlap_steps: list[int]
    overlap: list[float]
    mean_fraction_after_transient: float
    mean_overlap_after_transient: float
    matvecs_per_probe: float
    seconds: float
    plot_path: Path | None = None

    def summary(self) -> str:
        k = self.config["k"]
        return (
            f"top-subspace study (k = {k}): after the transient the gradient's share in the top-"
            f"{k} Hessian eigenspace averages {self.mean_fraction_after_transient:.3f}, the "
            f"overlap between consecutive probes {self.mean_overlap_after_transient:.3f}; "
            f"{self.matvecs_per_probe:.0f} Hessian-vector products per probe, {self.seconds:.0f} s"
        )


@on_cpu_threads
def run_top_subspace(
    out_dir: str | Path,
    steps: int = 1000,
    *,
    k: int = 10,
    probe_examples: int = 1437,
    hidden: int = 32,
    lr: float = 1.0,
    batch_size: int = 256,
    probe_every: int = 20,
    transient: float = 0.125,
    loss: str = "square",
    seed: int = 0,
    progress: bool = True,
    plot: bool = True,
    num_threads: int | None = 1,
) -> TopSubspaceStudyResult:
    """Train with a top-subspace probe; write ``top_subspace.json`` (+ png) and the run store
    under ``out_dir/runs/sgd``. The Hessian and the gradient are both those of the first
    ``probe_examples`` training images (all 1437 by default); ``loss``: ``"square"`` or
    ``"cross_entropy"``."""
    if loss not in _LOSSES:
        raise ValueError(f"loss must be one of {tuple(_LOSSES)}, got {loss!r}")
    loss_fn = _LOSSES[loss]
    steps, k = positive_int("steps", steps), positive_int("k", k)
    transient = finite_float("transient", transient, low=0.0, high=1.0, high_open=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train, _ = digits_subset(1437, seed=seed)
    probe_batch = (train[0][:probe_examples], train[1][:probe_examples])
    torch.manual_seed(seed)
    model = MLP(64, [hidden, hidden], 10)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=finite_float("lr", lr, low=0.0, low_open=True)
    )
    probe = TopSubspaceProbe(loss_fn, probe_batch, every=probe_every, k=k)

    def on_step(step: int, loss: float) -> None:
        if progress and step % (10 * probe_every) == 0:
            print(f"[top-subspace] step {step} loss {loss:.4f}", flush=True)

    run = train_monitored(
        out / "runs" / "sgd",
        model,
        optimizer,
        train,
        steps=steps,
        batch_size=positive_int("batch_size", batch_size),
        signals=[probe],
        seed=seed,
        on_step=on_step,
        loss_fn=loss_fn,
    )
    probed, fraction = run.series(GRADIENT_TOP_SUBSPACE_FRACTION.key())
    overlap_steps, overlap = run.series(TOP_SUBSPACE_OVERLAP.key())
    _, matvecs = run.series(TOP_SUBSPACE_MATVECS.key())
    after = probed >= transient * steps
    result = TopSubspaceStudyResult(
        config=dict(
            steps=steps,
            k=k,
            probe_examples=probe_examples,
            hidden=hidden,
            lr=lr,
            batch_size=batch_size,
            probe_every=probe_every,
            transient=transient,
            seed=seed,
            model=f"MLP 64-{hidden}-{hidden}-10 ReLU",
            loss=loss,
            optimizer="SGD",
        ),
        steps=probed.astype(int).tolist(),
        fraction=fraction.tolist(),
        overlap_steps=overlap_steps.astype(int).tolist(),
        overlap=overlap.tolist(),
        mean_fraction_after_transient=float(np.mean(fraction[after])),
        mean_overlap_after_transient=float(np.mean(overlap[overlap_steps >= transient * steps])),
        matvecs_per_probe=float(np.mean(matvecs)),
        seconds=time.perf_counter() - started,
    )
    return save_result(result, out, "top_subspace", _plot, plot, progress)


def _plot(result: TopSubspaceStudyResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = result.config["k"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(
        result.steps,
        result.fraction,
        "o-",
        ms=3,
        label=f"share of the gradient in the top-{k} eigenspace",
    )
    ax.plot(
        result.overlap_steps,
        result.overlap,
        "s-",
        ms=3,
        label="overlap with the previous probe's eigenspace",
    )
    ax.axvline(result.config["transient"] * result.config["steps"], color="grey", ls=":", lw=1)
    ax.axhline(0.9, color="grey", ls="--", lw=0.8)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("SGD step")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Digits MLP: the gradient lives in the top Hessian eigenspace")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
