"""Benchmark: what each training-dynamics probe costs, against one training step measured in the
same run (CPU, one thread).

Model: an MLP 64-128-128-10 (ReLU, ~26k parameters) on scikit-learn's digits; the training step
(forward, backward and an SGD update on a batch of 64) is the unit. Every probe runs on a held
batch of 256 images. Costs are reported in the probe's own currency (per-example gradients,
backward passes, Hessian-vector products, forward passes) and in training steps of time. Times
are the best process CPU time over a few repeats (least disturbed by other processes on a shared
machine).

Run:  PYTHONPATH=. python bench/dynamics.py [--quick]
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from steadygrad.data import load_digits
from steadygrad.dynamics import (
    gradient_coherence,
    gradient_noise_scale,
    landscape_rise,
    loss_landscape,
    per_example_gradients,
    signal_propagation,
    top_subspace_overlap,
)
from steadygrad.models import MLP


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.process_time()
        out = fn()
        best = min(best, time.process_time() - start)
    return best, out


def loss_fn(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    repeats = 3 if args.quick else 7
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", RuntimeWarning)
    x, y, _, _ = load_digits()
    torch.manual_seed(0)
    model = MLP(64, [128, 128], 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):  # a partly trained model, as a probe would see it
        idx = torch.randint(0, len(x), (64,), generator=gen)
        opt.zero_grad()
        loss_fn(model, (x[idx], y[idx])).backward()
        opt.step()
    held = (x[:256], y[:256])
    train_batch = (x[:64], y[:64])

    def train_step():
        opt.zero_grad()
        loss_fn(model, train_batch).backward()
        opt.step()

    state = {k: v.clone() for k, v in model.state_dict().items()}
    step_time, _ = timed(train_step, 50)  # cheap: many repeats for a steady baseline
    model.load_state_dict(state)
    opt.zero_grad(set_to_none=True)

    def loop_gradients():
        for i in range(256):
            model.zero_grad()
            loss_fn(model, (held[0][i : i + 1], held[1][i : i + 1])).backward()
        model.zero_grad(set_to_none=True)

    first = top_subspace_overlap(model, loss_fn, held, 10)
    rows: list[tuple[str, str, float]] = []

    def add(name: str, cost: str, fn: Callable[[], object]) -> object:
        seconds, out = timed(fn, repeats)
        rows.append((name, cost, seconds))
        return out

    rows.append(("one training step (batch 64): the unit", "1 forward+backward+update", step_time))
    add(
        "per-example gradients, vmap",
        "256 per-example gradients",
        lambda: per_example_gradients(model, loss_fn, held),
    )
    add("per-example gradients, loop (reference)", "256 backward passes", loop_gradients)
    add(
        "gradient_coherence (per layer)",
        "256 per-example gradients",
        lambda: gradient_coherence(model, loss_fn, held),
    )
    add(
        "gradient_noise_scale per_example",
        "256 per-example gradients",
        lambda: gradient_noise_scale(model, loss_fn, held),
    )
    add(
        "gradient_noise_scale two_batch (B_s=8)",
        "33 backward passes",
        lambda: gradient_noise_scale(model, loss_fn, held, method="two_batch", small_batch=8),
    )
    cold = add(
        "top_subspace_overlap k=10, cold",
        "",
        lambda: top_subspace_overlap(model, loss_fn, held, 10),
    )
    rows[-1] = (rows[-1][0], f"{cold.matvecs} Hessian-vector products", rows[-1][2])
    warm = add(
        "top_subspace_overlap k=10, warm start",
        "",
        lambda: top_subspace_overlap(model, loss_fn, held, 10, previous=first),
    )
    rows[-1] = (rows[-1][0], f"{warm.matvecs} Hessian-vector products", rows[-1][2])
    add(
        "loss_landscape 1-D, 21 points",
        "22 forward passes",
        lambda: loss_landscape(model, loss_fn, held, steps=21),
    )
    add(
        "loss_landscape 2-D, 11 x 11",
        "122 forward passes",
        lambda: loss_landscape(model, loss_fn, held, dims=2, steps=11),
    )
    add(
        "landscape_rise (probe), 4 directions",
        "12 forward passes",
        lambda: landscape_rise(model, loss_fn, held, directions=4),
    )
    add("signal_propagation", "1 forward+backward", lambda: signal_propagation(model, held[0]))
    add(
        "signal_propagation + Jacobian (8 examples)",
        "+ 8 x 10 Jacobian rows",
        lambda: signal_propagation(model, held[0], jacobian=True),
    )

    print(
        f"steadygrad dynamics probes, MLP 64-128-128-10 ({sum(p.numel() for p in model.parameters())}"
        f" parameters), held batch 256, 1 CPU thread; best of {repeats}"
    )
    print(f"  {'probe':46s} | {'cost':30s} | {'ms':>8s} | {'x train step':>12s}")
    for name, cost, seconds in rows:
        print(f"  {name:46s} | {cost:30s} | {seconds * 1e3:8.2f} | {seconds / step_time:12.1f}")


if __name__ == "__main__":
    main()
