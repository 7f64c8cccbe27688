"""Overhead of the Monitor under DDP: 2 processes, gloo, CPU, TinyGPT.

Both ranks train two identical DDP replicas in alternating blocks, one bare and one watched by a
Monitor, and compare the median step time on rank 0. The Monitor's collectives are counted by
wrapping torch.distributed's Python collectives (DDP's own gradient all-reduce runs in C++ and
is not counted), and compared with the Reducer's own count.
Usage: python bench/distributed_overhead.py [--steps 30] [--rounds 4]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "reduce_scatter_tensor",
    "broadcast",
    "reduce",
    "gather",
    "scatter",
    "barrier",
)


def _count_collectives() -> dict[str, list[int]]:
    """Wrap torch.distributed's collectives: calls and tensor bytes by the calling module."""
    counts: dict[str, list[int]] = {}

    def wrap(fn):
        @functools.wraps(fn)
        def counted(*args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "?")
            tensor = args[0] if args and isinstance(args[0], torch.Tensor) else None
            seen = counts.setdefault(caller, [0, 0])
            seen[0] += 1
            seen[1] += 0 if tensor is None else tensor.numel() * tensor.element_size()
            return fn(*args, **kwargs)

        return counted

    for name in COLLECTIVES:
        setattr(dist, name, wrap(getattr(dist, name)))
    return counts


def _worker(rank: int, world: int, port: int, out: str, steps: int, rounds: int) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    import steadygrad
    from steadygrad.data import TextData
    from steadygrad.models import TinyGPT

    counts = _count_collectives()
    data = TextData.from_stdlib()
    gen = torch.Generator().manual_seed(rank)
    batches = [data.batch(8, 64, generator=gen) for _ in range(16)]

    def replica():
        torch.manual_seed(0)
        model = TinyGPT(n_layer=2, n_head=4, n_embd=64, block_size=64)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        return ddp, torch.optim.AdamW(ddp.parameters(), lr=1e-3)

    bare_model, bare_opt = replica()
    watched_model, watched_opt = replica()
    with tempfile.TemporaryDirectory() as tmp:
        monitor = steadygrad.Monitor(watched_model, watched_opt, f"{tmp}/run", progress=False)

        def train(model, optimizer, n, mon=None) -> list[float]:
            times = []
            for i in range(n):
                x, y = batches[i % len(batches)]
                t0 = time.perf_counter()
                logits = model(x)
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), y.reshape(-1)
                )
                loss.backward()
                optimizer.step()
                if mon is not None:
                    mon.step(loss)
                optimizer.zero_grad(set_to_none=True)
                times.append(time.perf_counter() - t0)
            return times

        train(bare_model, bare_opt, 5)
        train(watched_model, watched_opt, 5, monitor)
        bare, watched = [], []
        counts.clear()
        recorded0 = monitor.reducer.collectives
        for _ in range(rounds):
            bare += train(bare_model, bare_opt, steps)
            watched += train(watched_model, watched_opt, steps, monitor)
        n = rounds * steps
        result = {
            "bare": bare,
            "watched": watched,
            "by_caller": {k: [c / n, b / n] for k, (c, b) in counts.items()},
            "reducer_calls_per_step": (monitor.reducer.collectives - recorded0) / n,
            "parameters": sum(p.numel() for p in watched_model.parameters()),
            "tensors": len(list(watched_model.parameters())),
        }
        monitor.close()
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30, help="steps per block")
    parser.add_argument("--rounds", type=int, default=4, help="blocks of each kind")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(2, port, out, args.steps, args.rounds), nprocs=2)
        ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(2)]
    r0 = ranks[0]
    b, w = statistics.median(r0["bare"]), statistics.median(r0["watched"])
    print(
        f"DDP, 2 ranks, gloo, CPU (1 thread each): TinyGPT {r0['parameters'] / 1e6:.2f}M "
        f"parameters in {r0['tensors']} tensors, {len(r0['bare'])} steps each"
    )
    print(f"{'':12}{'median ms':>12}{'mean ms':>12}")
    print(f"{'bare':12}{b * 1e3:12.2f}{statistics.mean(r0['bare']) * 1e3:12.2f}")
    print(f"{'monitored':12}{w * 1e3:12.2f}{statistics.mean(r0['watched']) * 1e3:12.2f}")
    print(f"overhead ratio (median): {w / b:.3f}x")
    print("collectives per recorded step, by the module that called them (observed):")
    for r, rank in enumerate(ranks):
        for caller, (calls, size) in sorted(rank["by_caller"].items()):
            print(f"  rank {r}: {caller}: {calls:.2f} calls, {size:.0f} bytes")
        print(f"  rank {r}: the Reducer's own count: {rank['reducer_calls_per_step']:.2f} calls")
    print(
        "(default_hooks: DDP's own gradient all-reduce, routed through the Monitor's comm hook "
        "so it can read each rank's gradients first; bare DDP makes the same call in C++)"
    )


if __name__ == "__main__":
    main()
