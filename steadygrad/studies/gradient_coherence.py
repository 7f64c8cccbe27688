"""Study: gradient coherence with real and random labels (Chatterjee 2020; Chatterjee and
Zielinski 2022, "On the generalization mystery in deep learning").

An MLP is trained by minibatch SGD on a subset of scikit-learn's digits twice: with the real
labels and with the labels shuffled among the images. A
:class:`~steadygrad.dynamics.GradientCoherenceProbe` in the Monitor measures the m-coherence of
the per-example gradients on a fixed sample of the training images. The published picture: with
real labels the per-example gradients agree (coherence well above 1, the orthogonal value) while
the loss falls; with random labels they are nearly orthogonal (coherence near 1) and the network
can only memorise, one example at a time; as a network turns to memorising (the real-label run
once the easy structure is fitted, the random-label run throughout), coherence falls.

Example:
    >>> result = run_gradient_coherence("out", steps=600, progress=False)  # doctest: +SKIP
    >>> result.peak_coherence  # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from steadygrad.core.checks import finite_float, positive_int
from steadygrad.dynamics.coherence import GRADIENT_COHERENCE, GradientCoherenceProbe
from steadygrad.models import MLP
from steadygrad.studies._monitored import accuracy, digits_subset, train_monitored
from steadygrad.studies._results import save_result
from steadygrad.studies._threads import on_cpu_threads

VARIANTS = ("real", "random")


@dataclass
class CoherenceStudyResult:
    """Per label variant: the probed steps, m-coherence, training loss and accuracy there.

    ``peak_coherence[v]`` is the largest value, ``final_coherence[v]`` the last;
    ``memorisation_step[v]`` the first probe where the training accuracy on the probed sample
    passed ``memorised`` (None if never)."""

    config: dict
    steps: dict[str, list[int]] = field(default_factory=dict)
    coherence: dict[str, list[float]] = field(default_factory=dict)
    train_loss: dict[str, list[float]] = field(default_factory=dict)
    train_accuracy: dict[str, list[float]] = field(default_factory=dict)
    test_accuracy: dict[str, float] = field(default_factory=dict)
    peak_coherence: dict[str, float] = field(default_factory=dict)
    final_coherence: dict[str, float] = field(default_factory=dict)
    memorisation_step: dict[str, int | None] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    plot_path: Path | None = None

    def summary(self) -> str:
        m = self.config["probe_examples"]
        lines = [f"gradient-coherence study (m = {m} examples; 1 = orthogonal, {m} = identical):"]
        for v in self.steps:
            lines.append(
                f"  {v:6s} labels: peak coherence {self.peak_coherence[v]:.2f}, final "
                f"{self.final_coherence[v]:.2f}, final train acc {self.train_accuracy[v][-1]:.2f},"
                f" test acc {self.test_accuracy[v]:.2f}, memorised at step "
                f"{self.memorisation_step[v]}, {self.seconds[v]:.0f} s"
            )
        return "\n".join(lines)


@on_cpu_threads
def run_gradient_coherence(
    out_dir: str | Path,
    steps: int = 1500,
    *,
    samples: int = 512,
    probe_examples: int = 256,
    hidden: int = 256,
    lr: float = 0.05,
    batch_size: int = 32,
    probe_every: int = 50,
    memorised: float = 0.9,
    seed: int = 0,
    progress: bool = True,
    plot: bool = True,
    num_threads: int | None = 1,
) -> CoherenceStudyResult:
    """Train on real and on random labels; write ``gradient_coherence.json`` (+ png) and one run
    store per variant under ``out_dir/runs``."""
    steps, samples = positive_int("steps", steps), positive_int("samples", samples)
    probe_examples = positive_int("probe_examples", probe_examples)
    if probe_examples > samples:
        raise ValueError(f"probe_examples must be <= samples ({samples}), got {probe_examples}")
    lr = finite_float("lr", lr, low=0.0, low_open=True)
    memorised = finite_float("memorised", memorised, low=0.0, high=1.0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = dict(
        steps=steps,
        samples=samples,
        probe_examples=probe_examples,
        hidden=hidden,
        lr=lr,
        batch_size=batch_size,
        probe_every=probe_every,
        seed=seed,
        model=f"MLP 64-{hidden}-{hidden}-10 ReLU",
        optimizer="SGD",
    )
    result = CoherenceStudyResult(config)
    for variant in VARIANTS:
        started = time.perf_counter()
        train, test = digits_subset(samples, random_labels=variant == "random", seed=seed)
        probe_batch = (train[0][:probe_examples], train[1][:probe_examples])
        torch.manual_seed(seed)
        model = MLP(64, [hidden, hidden], 10)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        probe = GradientCoherenceProbe(_loss, probe_batch, every=probe_every, per_layer=True)
        losses, accs = [], []

        def on_step(
            step: int, loss: float, model=model, probe_batch=probe_batch, losses=losses, accs=accs
        ) -> None:
            if step % probe_every == 0:
                losses.append(float(_loss(model, probe_batch).detach()))
                accs.append(accuracy(model, probe_batch))

        run = train_monitored(
            out / "runs" / variant,
            model,
            optimizer,
            train,
            steps=steps,
            batch_size=positive_int("batch_size", batch_size),
            signals=[probe],
            seed=seed,
            on_step=on_step,
        )
        probed, coherence = run.series(GRADIENT_COHERENCE.key())
        result.steps[variant] = probed.astype(int).tolist()
        result.coherence[variant] = coherence.tolist()
        result.train_loss[variant] = losses
        result.train_accuracy[variant] = accs
        result.test_accuracy[variant] = accuracy(model, test)
        result.peak_coherence[variant] = float(np.max(coherence))
        result.final_coherence[variant] = float(coherence[-1])
        result.memorisation_step[variant] = next(
            (s for s, a in zip(result.steps[variant], accs, strict=False) if a >= memorised), None
        )
        result.seconds[variant] = time.perf_counter() - started
        if progress:
            print(
                f"[gradient-coherence] {variant} labels done in {result.seconds[variant]:.0f} s",
                flush=True,
            )
    return save_result(result, out, "gradient_coherence", _plot, plot, progress)


def _loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])


def _plot(result: CoherenceStudyResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for i, v in enumerate(result.steps):
        color = f"C{i}"
        top.plot(result.steps[v], result.coherence[v], color=color, label=f"{v} labels")
        bottom.plot(result.steps[v], result.train_accuracy[v], color=color, label=f"{v} labels")
        mem = result.memorisation_step[v]
        if mem is not None:
            for ax in (top, bottom):
                ax.axvline(mem, color=color, ls=":", lw=1)
    top.axhline(1.0, color="grey", ls="--", lw=0.8)
    top.set_yscale("log")
    top.set_ylabel("m-coherence of per-example gradients")
    top.legend(fontsize=8)
    bottom.set_ylabel("training accuracy (probed sample)")
    bottom.set_xlabel("SGD step")
    fig.suptitle("Digits: per-example gradients agree with real labels, not with random ones")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
