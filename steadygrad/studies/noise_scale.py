"""Study: the gradient noise scale grows as the loss falls (McCandlish, Kaplan, Amodei et al.
2018, "An empirical model of large-batch training").

An MLP is trained by minibatch SGD on scikit-learn's digits with a
:class:`~steadygrad.dynamics.GradientNoiseScaleProbe` in the Monitor, which estimates
B_simple = tr(Sigma) / |G|^2 from the per-example gradients of a held sample of training
images. The published picture: B_simple, the batch size beyond which larger batches stop paying,
starts small and grows by an order of magnitude or more over training, as |G| shrinks faster than
the per-example noise. The study reports B_simple against the training loss and their rank
correlation (the two-batch-size estimator of the paper's App. A is run on the same sample as a
cross-check).

Example:
    >>> result = run_noise_scale("out", steps=1000, progress=False)  # doctest: +SKIP
    >>> result.growth  # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from steadygrad.core.checks import finite_float, positive_int
from steadygrad.dynamics.noise_scale import (
    GRADIENT_MEAN_SQ_NORM,
    GRADIENT_NOISE_SCALE,
    GRADIENT_NOISE_TRACE,
    GradientNoiseScaleProbe,
)
from steadygrad.models import MLP
from steadygrad.studies._monitored import cross_entropy, digits_subset, train_monitored
from steadygrad.studies._results import save_result
from steadygrad.studies._threads import on_cpu_threads


@dataclass
class NoiseScaleStudyResult:
    """The probed steps, B_simple (per-example and two-batch estimators), tr(Sigma), |G|^2 and
    the loss on the probed sample; ``growth`` = median B_simple over the last quarter of probes /
    over the first quarter (finite values: B_simple is inf when the |G|^2 estimate is not
    positive, i.e. larger than the sample can resolve); ``rank_correlation`` = Spearman's rho of
    loss against B_simple."""

    config: dict
    steps: list[int]
    noise_scale: list[float]
    two_batch_noise_scale: list[float]
    trace: list[float]
    mean_sq_norm: list[float]
    loss: list[float]
    growth: float
    rank_correlation: float
    seconds: float
    plot_path: Path | None = None

    def summary(self) -> str:
        return (
            f"noise-scale study ({self.config['probe_examples']} examples probed): B_simple "
            f"{self.noise_scale[0]:.3g} at the start, "
            f"{self.noise_scale[-1]:.3g} at the end (loss {self.loss[0]:.3g} -> "
            f"{self.loss[-1]:.3g}); growth x{self.growth:.1f} (last quarter / first quarter), "
            f"Spearman(loss, B_simple) = {self.rank_correlation:.2f}; {self.seconds:.0f} s"
        )


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


@on_cpu_threads
def run_noise_scale(
    out_dir: str | Path,
    steps: int = 600,
    *,
    probe_examples: int = 1437,
    hidden: int = 128,
    lr: float = 0.05,
    batch_size: int = 32,
    probe_every: int = 25,
    small_batch: int = 32,
    seed: int = 0,
    progress: bool = True,
    plot: bool = True,
    num_threads: int | None = 1,
) -> NoiseScaleStudyResult:
    """Train with a noise-scale probe; write ``noise_scale.json`` (+ png) and the run store
    under ``out_dir/runs/sgd``."""
    steps = positive_int("steps", steps)
    probe_examples = positive_int("probe_examples", probe_examples)
    lr = finite_float("lr", lr, low=0.0, low_open=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train, _ = digits_subset(1437, seed=seed)
    probe_batch = (train[0][:probe_examples], train[1][:probe_examples])
    torch.manual_seed(seed)
    model = MLP(64, [hidden, hidden], 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    every = positive_int("probe_every", probe_every)
    per_example = GradientNoiseScaleProbe(cross_entropy, probe_batch, every=every)
    losses: list[float] = []
    two_batch: list[float] = []

    def on_step(step: int, loss: float) -> None:
        if step % every == 0:
            losses.append(float(cross_entropy(model, probe_batch).detach()))
            from steadygrad.dynamics.noise_scale import gradient_noise_scale

            est = gradient_noise_scale(
                model, cross_entropy, probe_batch, method="two_batch", small_batch=small_batch
            )
            two_batch.append(est.value)
            if progress and step % (10 * every) == 0:
                print(f"[noise-scale] step {step} loss {losses[-1]:.4f}", flush=True)

    run = train_monitored(
        out / "runs" / "sgd",
        model,
        optimizer,
        train,
        steps=steps,
        batch_size=positive_int("batch_size", batch_size),
        signals=[per_example],
        seed=seed,
        on_step=on_step,
    )
    probed, b_simple = run.series(GRADIENT_NOISE_SCALE.key())
    _, trace = run.series(GRADIENT_NOISE_TRACE.key())
    _, g2 = run.series(GRADIENT_MEAN_SQ_NORM.key())
    quarter = max(1, len(b_simple) // 4)
    # Once B_simple exceeds the probed sample, |G|^2's unbiased estimate can be <= 0 (B = inf):
    # medians of the finite values keep those probes from deciding the growth.
    finite = np.where(np.isfinite(b_simple), b_simple, np.nan)
    growth = float(np.nanmedian(finite[-quarter:]) / np.nanmedian(finite[:quarter]))
    result = NoiseScaleStudyResult(
        config=dict(
            steps=steps,
            probe_examples=probe_examples,
            hidden=hidden,
            lr=lr,
            batch_size=batch_size,
            probe_every=probe_every,
            small_batch=small_batch,
            seed=seed,
            model=f"MLP 64-{hidden}-{hidden}-10 ReLU",
            optimizer="SGD",
        ),
        steps=probed.astype(int).tolist(),
        noise_scale=b_simple.tolist(),
        two_batch_noise_scale=two_batch,
        trace=trace.tolist(),
        mean_sq_norm=g2.tolist(),
        loss=losses,
        growth=growth,
        rank_correlation=_spearman(np.asarray(losses), b_simple),
        seconds=time.perf_counter() - started,
    )
    return save_result(result, out, "noise_scale", _plot, plot, progress)


def _plot(result: NoiseScaleStudyResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))

    def finite(values: list[float]) -> np.ndarray:
        return np.where(np.isfinite(values), values, np.nan)  # inf: beyond what the sample resolves

    left.plot(result.steps, finite(result.noise_scale), label="B_simple (per-example)")
    left.plot(
        result.steps,
        finite(result.two_batch_noise_scale),
        ".",
        ms=3,
        label="B_simple (two batch sizes)",
    )
    left.set_yscale("log")
    left.set_xlabel("SGD step")
    left.set_ylabel("gradient noise scale (examples)")
    left.legend(fontsize=8)
    right.loglog(result.loss, finite(result.noise_scale), "o-", ms=3)
    right.invert_xaxis()
    right.set_xlabel("training loss (probed sample), falling ->")
    right.set_ylabel("B_simple")
    fig.suptitle("Digits MLP: the critical batch size grows as the loss falls")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
