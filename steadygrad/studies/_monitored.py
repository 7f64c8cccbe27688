"""Training a small classifier on digits under a real Monitor, for the dynamics studies."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from steadygrad.core.signal import Signal
from steadygrad.data import load_digits
from steadygrad.diagnose.detectors import Detector
from steadygrad.monitor.monitor import watch
from steadygrad.store import Run, load


def digits_subset(
    samples: int, *, random_labels: bool = False, seed: int = 0
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``(train, test)``: the first ``samples`` training images (labels shuffled among them when
    ``random_labels``) and the held-out test images."""
    x, y, x_test, y_test = load_digits(seed=seed)
    if samples > len(x):
        raise ValueError(f"samples must be <= {len(x)} (the digits training split), got {samples}")
    x, y = x[:samples], y[:samples]
    if random_labels:
        y = y[torch.randperm(samples, generator=torch.Generator().manual_seed(seed + 1))]
    return (x, y), (x_test, y_test)


def cross_entropy(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]):
    return F.cross_entropy(model(batch[0]), batch[1])


def square_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]):
    """0.5 * ||f(x) - onehot(y)||^2 per example, averaged (the EoS papers' loss)."""
    x, y = batch
    target = F.one_hot(y, 10).to(x.dtype) if y.dtype == torch.long else y
    return 0.5 * ((model(x) - target) ** 2).sum(dim=1).mean()


def train_monitored(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train: tuple[torch.Tensor, torch.Tensor],
    *,
    steps: int,
    batch_size: int,
    signals: Sequence[Signal],
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor] = cross_entropy,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
    detectors: Sequence[Detector] | None = None,
) -> Run:
    """Minibatch training (sampled without replacement, reshuffled each epoch) with ``signals``
    (and ``detectors``, default: the Monitor's) in a Monitor writing to ``run_dir``; returns the
    loaded run."""
    if (run_dir / "run.db").exists():  # a study re-run replaces its own earlier runs
        shutil.rmtree(run_dir)
    x, y = train
    n = len(x)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=gen)
    cursor = 0
    with watch(
        model, optimizer, run_dir, signals=list(signals), detectors=detectors, progress=False
    ) as mon:
        for step in range(steps):
            if cursor + batch_size > n:
                order, cursor = torch.randperm(n, generator=gen), 0
            idx = order[cursor : cursor + batch_size]
            cursor += batch_size
            loss = loss_fn(model, (x[idx], y[idx]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            mon.step(loss)
            if on_step is not None:
                on_step(step, float(loss.detach()))
    return load(run_dir)


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    return float((model(data[0]).argmax(1) == data[1]).float().mean())
