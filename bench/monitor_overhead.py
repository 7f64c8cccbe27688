"""Overhead of the Monitor at its default settings on TinyGPT training steps (CPU).

Alternates blocks of bare steps and monitored steps in one process and compares the median
step time. Usage: python bench/monitor_overhead.py [--steps 60] [--rounds 6]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

import steadygrad
from steadygrad.data import TextData
from steadygrad.models import TinyGPT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=50, help="steps per block")
    parser.add_argument("--rounds", type=int, default=6, help="blocks of each kind")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    data = TextData.from_stdlib()
    model = TinyGPT(n_layer=4, n_head=4, n_embd=128, block_size=64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    batches = [data.batch(16, 64, generator=gen) for _ in range(32)]

    def train(steps: int, monitor: steadygrad.Monitor | None) -> list[float]:
        times = []
        for i in range(steps):
            x, y = batches[i % len(batches)]
            t0 = time.perf_counter()
            loss = model.loss(x, y)
            loss.backward()
            optimizer.step()
            if monitor is not None:
                monitor.step(loss)
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
        return times

    train(10, None)  # warm-up
    bare: list[float] = []
    monitored: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            bare += train(args.steps, None)
            # A Monitor per block, closed after it, so bare blocks run with no hook attached.
            monitor = steadygrad.Monitor(model, optimizer, f"{tmp}/run{r}", progress=False)
            monitored += train(args.steps, monitor)
            monitor.close()
    n_params = sum(p.numel() for p in model.parameters())
    b, m = statistics.median(bare), statistics.median(monitored)
    bm, mm = statistics.mean(bare), statistics.mean(monitored)
    print(
        f"TinyGPT {n_params / 1e6:.2f}M parameters, {args.threads} thread(s), {len(bare)} steps each"
    )
    print(f"{'':12}{'median ms':>12}{'mean ms':>12}")
    print(f"{'bare':12}{b * 1e3:12.2f}{bm * 1e3:12.2f}")
    print(f"{'monitored':12}{m * 1e3:12.2f}{mm * 1e3:12.2f}")
    print(f"overhead ratio: median {m / b:.3f}x, mean {mm / bm:.3f}x (target <= 1.03x)")


if __name__ == "__main__":
    main()
