"""Study: grokking at the edge of numerical stability (Prieto et al. 2025), on modular addition.

Setup (the paper's MLP task, smaller by default): ``(a + b) mod p`` from two one-hot inputs,
all ``p**2`` pairs, a ``train_fraction`` split, an MLP with two bias-free ReLU hidden layers,
full-batch AdamW (betas 0.9/0.99, eps 1e-25 as in the authors' code, no weight decay, lr 0.01),
float32 model.
Variants:

- ``softmax``: softmax cross-entropy in float32. The net memorises the training set, then the
  logits keep growing along the weights ("naive loss minimisation") until the float32 softmax
  rounds the correct class to exactly 1 on more and more rows (Softmax Collapse): their gradient
  is exactly zero and the test accuracy stalls near zero.
- ``orthograd``: the same loss with ⊥AdamW (:class:`steadygrad.nn.OrthoGrad`), which removes
  the gradient component along the weights: it generalises within a few hundred steps.
- ``stablemax``: StableMax cross-entropy (float64 loss) with plain AdamW. The paper runs it for
  80k epochs; within a few thousand steps it may not generalise yet (reported as is).
- ``stablemax_orthosgd``: StableMax cross-entropy with ⊥SGD (lr 10, momentum 0.8) and a float64
  model, the paper's Fig. 6 configuration.

Example:
    >>> result = run_grokking("runs/grok", modulus=31, steps=600, progress=False)  # doctest: +SKIP
    >>> result.steps_to_generalise  # doctest: +SKIP
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from steadygrad.core.checks import finite_float, positive_int
from steadygrad.core.finding import Finding
from steadygrad.core.metrics import SOFTMAX_COLLAPSE
from steadygrad.diagnose.detectors.transformer import SOFTMAX_COLLAPSE_KIND
from steadygrad.diagnose.diagnosis import diagnose
from steadygrad.monitor import Monitor, SoftmaxCollapseSignal
from steadygrad.nn import OrthoGrad, stablemax_cross_entropy
from steadygrad.store import load
from steadygrad.studies._results import save_result
from steadygrad.studies._threads import on_cpu_threads

VARIANTS = ("softmax", "orthograd", "stablemax", "stablemax_orthosgd")


class ModularMLP(nn.Module):
    """``W3 relu(W2 relu(W1 [onehot(a); onehot(b)]))`` with no biases.

    The first layer is a Linear on the concatenated one-hot vectors; its product with a one-hot
    pair is computed as the sum of two of its columns (the same function, much cheaper).
    """

    def __init__(self, modulus: int, width: int) -> None:
        super().__init__()
        self.modulus = modulus
        self.fc1 = nn.Linear(2 * modulus, width, bias=False)
        self.fc2 = nn.Linear(width, width, bias=False)
        self.out = nn.Linear(width, modulus, bias=False)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        columns = self.fc1.weight.t()
        h = torch.relu(columns[pairs[:, 0]] + columns[self.modulus + pairs[:, 1]])
        return self.out(torch.relu(self.fc2(h)))


@dataclass
class GrokkingResult:
    """Curves per variant (evaluated every ``eval_every`` steps) and the headline numbers.

    ``steps_to_generalise[v]``: first evaluated step with test accuracy >= ``target_accuracy``
    (None if never). ``max_softmax_collapse[v]``: the largest training-set softmax-collapse
    fraction seen (NaN for StableMax, which has no softmax). ``findings[v]``: what the
    :class:`~steadygrad.diagnose.detectors.transformer.SoftmaxCollapse` detector raised.
    """

    config: dict
    steps: dict[str, list[int]] = field(default_factory=dict)
    train_accuracy: dict[str, list[float]] = field(default_factory=dict)
    test_accuracy: dict[str, list[float]] = field(default_factory=dict)
    softmax_collapse: dict[str, list[float]] = field(default_factory=dict)
    steps_to_generalise: dict[str, int | None] = field(default_factory=dict)
    final_test_accuracy: dict[str, float] = field(default_factory=dict)
    max_softmax_collapse: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    findings: dict[str, list[Finding]] = field(default_factory=dict)
    diagnosis: dict[str, list[str]] = field(default_factory=dict)
    run_dirs: dict[str, str] = field(default_factory=dict)
    plot_path: Path | None = None

    def summary(self) -> str:
        lines = [f"grokking study: {self.config}"]
        for v in self.steps:
            reached = self.steps_to_generalise[v]
            lines.append(
                f"  {v:10s} test acc {self.final_test_accuracy[v]:.3f}, "
                f"generalised at step {reached if reached is not None else 'never'}, "
                f"max softmax collapse {self.max_softmax_collapse[v]:.3f}, "
                f"{len(self.findings[v])} finding(s), {self.seconds[v]:.0f} s"
            )
        return "\n".join(lines)


def modular_addition_split(
    modulus: int, train_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """All pairs ``(a, b)`` with labels ``(a + b) mod modulus``, randomly split."""
    a, b = torch.meshgrid(torch.arange(modulus), torch.arange(modulus), indexing="ij")
    pairs = torch.stack([a.flatten(), b.flatten()], dim=1)
    labels = (pairs[:, 0] + pairs[:, 1]) % modulus
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))
    n_train = int(round(train_fraction * len(pairs)))
    train, test = order[:n_train], order[n_train:]
    return pairs[train], labels[train], pairs[test], labels[test]


@on_cpu_threads
def run_grokking(
    out_dir: str | Path,
    modulus: int = 31,
    train_fraction: float = 0.6,
    width: int = 200,
    steps: int = 3000,
    lr: float = 0.01,
    eval_every: int = 50,
    variants: Sequence[str] = VARIANTS,
    target_accuracy: float = 0.9,
    stop_when_generalised: bool = True,
    seed: int = 0,
    progress: bool = True,
    plot: bool = True,
    num_threads: int | None = 1,
) -> GrokkingResult:
    """Train each variant on modular addition; write ``grokking.json`` (and ``grokking.png``).

    A variant stops early once its test accuracy reaches 0.99 when ``stop_when_generalised``.
    Default size: p = 31, 60% train (577 pairs), width 200, 3000 full-batch steps, a few minutes
    on one CPU thread. The paper's size (``modulus=113, train_fraction=0.4``) shows the same
    picture but needs more steps for the collapse to build up (about 0.1 of the rows collapsed
    after 2000 steps) and 10+ minutes on a shared 2-core machine.

    Example:
        >>> result = run_grokking("out", modulus=23, steps=200, progress=False)  # doctest: +SKIP
    """
    modulus = positive_int("modulus", modulus)
    if modulus < 3:
        raise ValueError(f"modulus must be >= 3, got {modulus}")
    train_fraction = finite_float(
        "train_fraction", train_fraction, low=0.0, high=1.0, low_open=True, high_open=True
    )
    width, steps = positive_int("width", width), positive_int("steps", steps)
    eval_every = positive_int("eval_every", eval_every)
    lr = finite_float("lr", lr, low=0.0, low_open=True)
    target_accuracy = finite_float("target_accuracy", target_accuracy, low=0.0, high=1.0)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"variants must be a non-empty subset of {VARIANTS}, got {list(variants)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    x_train, y_train, x_test, y_test = modular_addition_split(modulus, train_fraction, seed)
    config = dict(
        modulus=modulus,
        train_fraction=train_fraction,
        width=width,
        steps=steps,
        lr=lr,
        n_train=len(y_train),
        n_test=len(y_test),
        optimizer="AdamW(0.9, 0.99, eps=1e-25)",
        seed=seed,
    )
    result = GrokkingResult(config=config)
    for variant in variants:
        start = time.perf_counter()
        torch.manual_seed(seed)
        model = ModularMLP(modulus, width)
        optimizer: torch.optim.Optimizer
        if variant == "stablemax_orthosgd":
            model = model.double()
            optimizer = OrthoGrad(torch.optim.SGD(model.parameters(), lr=10.0, momentum=0.8))
        else:
            optimizer = torch.optim.AdamW(
                model.parameters(), lr=lr, betas=(0.9, 0.99), eps=1e-25, weight_decay=0.0
            )
        if variant == "orthograd":
            optimizer = OrthoGrad(optimizer)
        uses_softmax = not variant.startswith("stablemax")
        signal = SoftmaxCollapseSignal(module="out", every=eval_every) if uses_softmax else None
        run_dir = out_dir / "runs" / variant
        shutil.rmtree(run_dir, ignore_errors=True)  # a study re-run records afresh
        curves: dict[str, list] = {"step": [], "train": [], "test": []}
        signals = [signal] if signal else []
        with Monitor(
            model, optimizer, run_dir, signals=signals, progress=False, config=config
        ) as mon:
            for step in range(steps + 1):
                logits = model(x_train)
                if step % eval_every == 0 or step == steps:
                    with torch.no_grad():
                        train_acc = (logits.argmax(1) == y_train).float().mean().item()
                        test_acc = (model(x_test).argmax(1) == y_test).float().mean().item()
                    for key, value in zip(curves, (step, train_acc, test_acc), strict=True):
                        curves[key].append(value)
                    if progress:
                        print(
                            f"[grokking:{variant}] step {step:5d} train {train_acc:.3f} "
                            f"test {test_acc:.3f}",
                            flush=True,
                        )
                    if stop_when_generalised and test_acc >= 0.99:
                        break
                if step == steps:
                    break
                if not uses_softmax:
                    loss = stablemax_cross_entropy(logits, y_train)
                else:
                    loss = F.cross_entropy(logits, y_train)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if signal is not None:
                    signal.set_targets(y_train)
                mon.step(loss)
        # The collapse and its finding, read back from the run as a user would.
        run = load(run_dir)
        recorded = (
            dict(zip(*run.series(SOFTMAX_COLLAPSE.name), strict=True))
            if SOFTMAX_COLLAPSE.name in run.names()
            else {}
        )
        curves["sc"] = [float(recorded.get(s, math.nan)) for s in curves["step"]]
        findings = [f for f in run.findings() if f.kind == SOFTMAX_COLLAPSE_KIND]
        result.diagnosis[variant] = [d.cause for d in diagnose(run).diagnoses]
        result.run_dirs[variant] = str(run_dir)
        result.steps[variant] = curves["step"]
        result.train_accuracy[variant] = curves["train"]
        result.test_accuracy[variant] = curves["test"]
        result.softmax_collapse[variant] = curves["sc"]
        result.steps_to_generalise[variant] = next(
            (
                s
                for s, acc in zip(curves["step"], curves["test"], strict=True)
                if acc >= target_accuracy
            ),
            None,
        )
        result.final_test_accuracy[variant] = curves["test"][-1]
        sc = [v for v in curves["sc"] if v == v]
        result.max_softmax_collapse[variant] = max(sc) if sc else float("nan")
        result.findings[variant] = findings
        result.seconds[variant] = time.perf_counter() - start

    return save_result(result, out_dir, "grokking", _plot, plot, progress)


def _plot(result: GrokkingResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for i, v in enumerate(result.steps):
        color = f"C{i}"  # one colour per variant: solid test, dotted train
        top.plot(result.steps[v], result.test_accuracy[v], color=color, label=f"{v} test")
        top.plot(result.steps[v], result.train_accuracy[v], ":", color=color, label=f"{v} train")
        if not v.startswith("stablemax"):
            bottom.plot(result.steps[v], result.softmax_collapse[v], color=color, label=v)
    top.set_ylabel("accuracy")
    top.legend(fontsize=7)
    bottom.set_ylabel("softmax collapse fraction")
    bottom.set_xlabel("full-batch step")
    bottom.legend(fontsize=7)
    fig.suptitle(f"modular addition mod {result.config['modulus']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
