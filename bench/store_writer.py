"""Benchmark: how long the training thread stalls on the run store, with the background writer
against the same store flushed synchronously (what every flush cost the loop before).

A loop records STEPS steps of METRICS values (a large model's per-parameter families) with
``flush_every=100``; between steps it does a fixed amount of CPU work standing in for a training
step. Reported: the worst and the total time spent inside the store's calls, and the ratio of
synchronous to background (higher is better for the background writer).

Run:  PYTHONPATH=. python bench/store_writer.py [--metrics 5000] [--steps 400]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from steadygrad.store import RunStore


def work(n: int = 20_000) -> float:
    total = 0.0
    for i in range(n):
        total += i * 0.5
    return total


def record(run_dir: str, metrics: int, steps: int, synchronous: bool) -> tuple[float, float]:
    store = RunStore(run_dir, flush_every=100, flush_seconds=1e9)
    names = [f"grad_norm/layer{i}.weight" for i in range(metrics)]
    worst = total = 0.0
    for step in range(steps):
        values = dict.fromkeys(names, float(step))
        started = time.perf_counter()
        store.add_scalars(step, values)
        if synchronous and (step + 1) % 100 == 0:
            store.flush()  # wait for the commit, as the loop did when it wrote the batch itself
        spent = time.perf_counter() - started
        worst, total = max(worst, spent), total + spent
        work()
    store.close()
    return worst, total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--metrics", type=int, default=5000)
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args()
    print(f"{args.steps} steps x {args.metrics} values, a flush every 100 steps")
    results = {}
    for mode in ("synchronous", "background"):
        with tempfile.TemporaryDirectory() as tmp:
            results[mode] = record(f"{tmp}/run", args.metrics, args.steps, mode == "synchronous")
        worst, total = results[mode]
        print(f"  {mode:12s} worst stall {worst * 1e3:8.1f} ms   total in store {total:6.2f} s")
    (sync_worst, sync_total), (bg_worst, bg_total) = results["synchronous"], results["background"]
    print(
        f"  ratio synchronous/background: worst stall {sync_worst / bg_worst:.1f}x, "
        f"total {sync_total / bg_total:.1f}x"
    )


if __name__ == "__main__":
    main()
