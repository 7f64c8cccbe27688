"""Overhead of the Monitor at its default settings, on TinyGPT and on a 5,000-tensor model (CPU).

For each model it alternates blocks of bare steps and monitored steps in one process and
compares the median (and mean) step time; it splits the Monitor's time per step into its parts
(signals, detectors, store, the rest); and, for the many-tensor model, it measures the run
store's size per recorded step at several step counts (linear growth) and the time of one
``Run.series`` read on that run; and (``--only scaling``) the Monitor's time per step at 1,250 to
5,000 tensors next to one ``_foreach_norm`` pass over every gradient and weight.

Usage: python bench/monitor_overhead.py [--steps 50] [--rounds 6] [--settle 30] [--pin-malloc]
       [--store-seconds 90 | --store-steps 10000] [--only tinygpt|rnn|many|store|scaling]
Goals (issue 15): <= 1.03x on TinyGPT (and on a looped RNN, ``--only rnn``), <= 1.10x on
5,000 tensors, <= 50 KB per recorded step.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import steadygrad
from steadygrad.data import TextData
from steadygrad.models import TinyGPT

Step = Callable[[], torch.Tensor]  # forward and backward of one batch; returns the loss
# glibc's heap trimming returns freed memory to the OS at moments that depend on the order of
# allocations: the next forward pass then page-faults it back in (1-3 ms per step on TinyGPT,
# in either arm, at random). Fixed thresholds keep the heap, so the arms differ only by the
# Monitor's own work (--pin-malloc); the printed page faults per step show the difference.
PINNED_MALLOC = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


class ManyTensors(nn.Module):
    """``branches`` tiny Linear layers side by side (weight + bias: 2 tensors each), averaged:
    a healthy model whose every tensor gets a gradient, with little compute per tensor."""

    def __init__(self, branches: int = 2500, width: int = 8) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.Linear(width, width) for _ in range(branches))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.tanh(b(x)) for b in self.branches]).mean(0)


def tinygpt() -> tuple[str, nn.Module, Step]:
    data = TextData.from_stdlib()
    model = TinyGPT(n_layer=4, n_head=4, n_embd=128, block_size=64)
    gen = torch.Generator().manual_seed(0)
    batches = [data.batch(16, 64, generator=gen) for _ in range(32)]
    it = iter(range(10**12))

    def step() -> torch.Tensor:
        x, y = batches[next(it) % len(batches)]
        loss = model.loss(x, y)
        loss.backward()
        return loss

    n = sum(p.numel() for p in model.parameters())
    return f"TinyGPT {n / 1e6:.2f}M parameters", model, step


class LoopedRNN(nn.Module):
    """A character-level tanh RNN written as a loop over a cell: the Monitor's hooked steps see
    the cell called at every time step, and test each call for a recurrence."""

    def __init__(self, vocab: int, width: int = 128) -> None:
        super().__init__()
        self.embed, self.inp = nn.Embedding(vocab, width), nn.Linear(width, width)
        self.cell, self.head = nn.Linear(width, width), nn.Linear(width, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.new_zeros(x.shape[0], self.cell.in_features, dtype=torch.float32)
        outs = []
        for e in self.embed(x).unbind(1):
            h = torch.tanh(self.inp(e) + self.cell(h))
            outs.append(self.head(h))
        return torch.stack(outs, 1)


def looped_rnn() -> tuple[str, nn.Module, Step]:
    data = TextData.from_stdlib()
    model = LoopedRNN(data.vocab_size)
    gen = torch.Generator().manual_seed(0)
    batches = [data.batch(16, 64, generator=gen) for _ in range(32)]
    it = iter(range(10**12))

    def step() -> torch.Tensor:
        x, y = batches[next(it) % len(batches)]
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        return loss

    n = sum(p.numel() for p in model.parameters())
    return f"looped RNN cell {n / 1e6:.2f}M parameters, 64 time steps", model, step


def many_tensors() -> tuple[str, nn.Module, Step]:
    model = ManyTensors()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 8, generator=gen), torch.randn(16, 8, generator=gen)

    def step() -> torch.Tensor:
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    n = sum(1 for _ in model.parameters())
    return f"ManyTensors {n} parameter tensors", model, step


class Split:
    """Wall time of the Monitor's parts, by wrapping the bound methods of one Monitor."""

    def __init__(self) -> None:
        self.seconds: collections.Counter[str] = collections.Counter()

    def wrap(self, obj: object, method: str, part: str) -> None:
        inner = getattr(obj, method)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[part] += time.perf_counter() - t0

        setattr(obj, method, timed)

    def attach(self, mon: steadygrad.Monitor) -> None:
        self.wrap(mon, "before_update", "signals (before the update)")
        self.wrap(mon, "_measure", "signals (measure, transfer, finish)")
        self.wrap(mon, "_detect", "detectors")
        self.wrap(mon.store, "add_scalars", "store")
        self.wrap(mon.store, "add_findings", "store")
        self.wrap(mon, "step", "mon.step in all")


def train(
    model: nn.Module, opt: torch.optim.Optimizer, fwd_bwd: Step, steps: int, mon=None
) -> list[float]:
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = fwd_bwd()
        opt.step()
        if mon is not None:
            mon.step(loss)
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times


def overhead(build, steps: int, rounds: int, settle: int, goal: float, tmp: str) -> None:
    torch.manual_seed(0)
    title, model, fwd_bwd = build()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train(model, opt, fwd_bwd, 5)  # warm-up
    bare: list[float] = []
    monitored: list[float] = []
    faults = collections.Counter()
    split = Split()
    for r in range(rounds):
        before = _page_faults()
        bare += train(model, opt, fwd_bwd, steps)
        faults["bare"] += _page_faults() - before
        # A Monitor per block, closed after it, so bare blocks run with no hook attached.
        mon = steadygrad.Monitor(model, opt, f"{tmp}/{id(model)}-{r}", progress=False)
        train(model, opt, fwd_bwd, settle, mon)  # untimed: past a new run's start-up cadences
        split.attach(mon)
        before = _page_faults()
        monitored += train(model, opt, fwd_bwd, steps, mon)
        faults["monitored"] += _page_faults() - before
        t0 = time.perf_counter()
        mon.close()
        split.seconds["close (flush, not per step)"] += time.perf_counter() - t0
    b, m = statistics.median(bare), statistics.median(monitored)
    bm, mm = statistics.mean(bare), statistics.mean(monitored)
    print(
        f"\n{title}, {torch.get_num_threads()} thread(s), {len(bare)} steps each "
        f"(monitored blocks timed after {settle} steps of each run)"
    )
    print(f"{'':12}{'median ms':>12}{'mean ms':>12}")
    print(f"{'bare':12}{b * 1e3:12.2f}{bm * 1e3:12.2f}")
    print(f"{'monitored':12}{m * 1e3:12.2f}{mm * 1e3:12.2f}")
    print(f"overhead ratio: median {m / b:.3f}x, mean {mm / bm:.3f}x (goal <= {goal:.2f}x)")
    print(
        "page faults per step: "
        + ", ".join(f"{arm} {n / len(bare):.0f}" for arm, n in sorted(faults.items()))
    )
    print("Monitor time per monitored step (mean over all monitored steps):")
    for part, seconds in split.seconds.items():
        print(f"  {part:40}{seconds / len(monitored) * 1e3:9.2f} ms")


def _page_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def store_growth(build, seconds: float, tmp: str, steps: int = 0) -> None:
    """Size of run.db (+ its WAL) per recorded step at doubling step counts: up to ``steps``
    when it is given (the last checkpoint is ``steps`` itself), else as far as ``seconds`` go."""
    torch.manual_seed(0)
    title, model, fwd_bwd = build()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    run_dir = Path(tmp) / "growth"
    mon = steadygrad.Monitor(model, opt, run_dir, progress=False)
    budget = f"{steps} steps" if steps else f"~{seconds:.0f} s of training"
    print(f"\nStore growth, {title}, default Monitor, {budget}")
    print(f"{'steps':>8}{'bytes':>14}{'KB/step':>10}{'KB/step since last':>20}")
    deadline = time.perf_counter() + seconds
    done, last = 0, (0, 0)
    checkpoint = 50
    while True:
        train(model, opt, fwd_bwd, checkpoint - done, mon)
        done = checkpoint
        mon.store.flush(timeout=60)
        with contextlib.closing(sqlite3.connect(run_dir / "run.db")) as db:  # WAL into run.db
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = sum(f.stat().st_size for f in run_dir.glob("run.db*") if f.is_file())
        since = (size - last[1]) / (done - last[0]) / 1e3
        print(f"{done:8d}{size:14d}{size / done / 1e3:10.1f}{since:20.1f}")
        last = (done, size)
        if (steps and done >= steps) or (not steps and time.perf_counter() > deadline):
            break
        checkpoint = min(checkpoint * 2, steps) if steps else checkpoint * 2
    mon.close()
    size = sum(f.stat().st_size for f in run_dir.glob("run.db*") if f.is_file())
    print(f"closed: {size} bytes, {size / done / 1e3:.1f} KB per recorded step")
    run = steadygrad.load(run_dir)
    for metric in ("loss", "grad_norm", "grad_norm/branches.1000.weight"):
        t0 = time.perf_counter()
        steps, _ = run.series(metric)
        ms = (time.perf_counter() - t0) * 1e3
        print(f"Run.series({metric!r}): {len(steps)} points in {ms:.1f} ms")


def scaling(steps: int, rounds: int, settle: int, tmp: str) -> None:
    """The Monitor's time per step against the tensor count, next to the time of one
    ``torch._foreach_norm`` pass over every gradient and weight (the memory-bound floor): the
    Monitor's cost should grow no faster than that pass."""
    print("\nScaling with the tensor count (medians; Monitor = monitored - bare step)")
    print(f"{'tensors':>8}{'bare ms':>10}{'Monitor ms':>12}{'norm pass ms':>14}{'ratio':>8}")
    for branches in (625, 1250, 2500):
        torch.manual_seed(0)
        model = ManyTensors(branches)
        gen = torch.Generator().manual_seed(0)
        x, y = torch.randn(16, 8, generator=gen), torch.randn(16, 8, generator=gen)

        def fwd_bwd(model=model, x=x, y=y) -> torch.Tensor:
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        train(model, opt, fwd_bwd, 3)
        bare: list[float] = []
        monitored: list[float] = []
        for r in range(rounds):
            bare += train(model, opt, fwd_bwd, steps)
            mon = steadygrad.Monitor(model, opt, f"{tmp}/s{branches}-{r}", progress=False)
            train(model, opt, fwd_bwd, settle, mon)
            monitored += train(model, opt, fwd_bwd, steps, mon)
            mon.close()
        fwd_bwd()
        tensors = [p.grad for p in model.parameters()] + [p.detach() for p in model.parameters()]
        passes = []
        for _ in range(20):
            t0 = time.perf_counter()
            torch.stack(torch._foreach_norm(tensors))
            passes.append(time.perf_counter() - t0)
        opt.zero_grad(set_to_none=True)
        b, m, n = statistics.median(bare), statistics.median(monitored), statistics.median(passes)
        extra = m - b
        print(f"{2 * branches:8d}{b * 1e3:10.1f}{extra * 1e3:12.2f}{n * 1e3:14.2f}{extra / n:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=50, help="steps per block")
    parser.add_argument("--rounds", type=int, default=6, help="blocks of each kind")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--settle",
        type=int,
        default=30,
        help="untimed monitored steps at the start of each block: a run's first steps measure "
        "more (activation guard steps, the update-curvature signal's early window of 30)",
    )
    parser.add_argument("--store-seconds", type=float, default=90.0)
    parser.add_argument(
        "--store-steps",
        type=int,
        default=0,
        help="measure store growth to this many steps (e.g. 10000) instead of for --store-seconds",
    )
    parser.add_argument(
        "--only", choices=("tinygpt", "rnn", "many", "store", "scaling"), default=None
    )
    parser.add_argument(
        "--pin-malloc",
        action="store_true",
        help="re-run with glibc malloc's trim and mmap thresholds fixed, so heap trimming does "
        "not add page faults at random to one arm or the other (both arms run the same way)",
    )
    args = parser.parse_args()
    if args.pin_malloc and PINNED_MALLOC[0] not in os.environ:
        os.environ.update(dict.fromkeys(PINNED_MALLOC, str(1 << 30)))
        os.execv(sys.executable, [sys.executable, *sys.argv])  # glibc reads them at start-up
    if args.pin_malloc:
        print(f"glibc malloc pinned: {', '.join(PINNED_MALLOC)} = 1 GiB")
    if args.store_steps < 0:
        parser.error(f"--store-steps must be >= 0, got {args.store_steps}")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "tinygpt"):
            overhead(tinygpt, args.steps, args.rounds, args.settle, 1.03, tmp)
        if args.only in (None, "rnn"):
            overhead(looped_rnn, args.steps, args.rounds, args.settle, 1.03, tmp)
        if args.only in (None, "many"):
            overhead(many_tensors, args.steps, args.rounds, args.settle, 1.10, tmp)
        if args.only in (None, "store") and (args.store_seconds > 0 or args.store_steps > 0):
            store_growth(many_tensors, args.store_seconds, tmp, args.store_steps)
        if args.only in (None, "scaling"):
            scaling(max(10, args.steps // 2), max(2, args.rounds // 2), args.settle, tmp)


if __name__ == "__main__":
    main()
