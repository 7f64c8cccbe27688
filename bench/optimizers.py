"""Benchmark: median ``optimizer.step()`` time of steadygrad's optimizers against torch's AdamW
(fused and default) and pytorch-optimizer's implementation of the same algorithm, on a stack of
many small tensors and on a few large tensors, with the memory-traffic lower bound.

Run: ``PYTHONPATH=. python bench/optimizers.py [--quick]`` (single thread, CPU).
Each time is also shown as a fraction of the physical limit: the bytes an update must read and
write (parameter, gradient, states) over the copy bandwidth measured in the same run.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import warnings

import torch

from steadygrad import optim as so
from steadygrad.optim import _base

# Minimum bytes read + written per parameter per step in float32 (p r/w, g r, states r/w).
BYTES_PER_PARAM = {
    "AdamW": 28,
    "SPAM": 28,
    "AdaBelief": 28,
    "Grams": 28,
    "Lion": 20,
    "DiffGrad": 36,
    "AdEMAMix": 36,
    "StableSPAM": 36,
}

OURS = {
    "SPAM": lambda ps, f: so.SPAM(ps, lr=1e-3, fused=f),
    "StableSPAM": lambda ps, f: so.StableSPAM(ps, lr=1e-3, fused=f),
    "AdaBelief": lambda ps, f: so.AdaBelief(ps, lr=1e-3, fused=f),
    "DiffGrad": lambda ps, f: so.DiffGrad(ps, lr=1e-3, fused=f),
    "Lion": lambda ps, f: so.Lion(ps, lr=1e-4, fused=f),
    "AdEMAMix": lambda ps, f: so.AdEMAMix(ps, lr=1e-3, fused=f),
    "Grams": lambda ps, f: so.Grams(ps, lr=1e-3, fused=f),
}


def peer(name: str):
    try:
        import pytorch_optimizer as po
    except ImportError:
        return None
    return {
        "SPAM": lambda ps: po.SPAM(ps, lr=1e-3),
        "StableSPAM": lambda ps: po.StableSPAM(ps, lr=1e-3),
        "AdaBelief": lambda ps: po.AdaBelief(ps, lr=1e-3),
        "DiffGrad": lambda ps: po.DiffGrad(ps, lr=1e-3),
        "Lion": lambda ps: po.Lion(ps, lr=1e-4),
        "AdEMAMix": lambda ps: po.AdEMAMix(ps, lr=1e-3),
        "Grams": lambda ps: po.Grams(ps, lr=1e-3),
    }[name]


def transformer_stack(d: int = 256, layers: int = 12, vocab: int = 4096) -> list[torch.Size]:
    """Shapes of a GPT-like stack: embeddings, per layer 2 norms, qkv, proj, 2 MLP matrices."""
    shapes = [torch.Size([vocab, d]), torch.Size([1024, d])]
    for _ in range(layers):
        shapes += [torch.Size([d]), torch.Size([d])]  # ln1
        shapes += [torch.Size([3 * d, d]), torch.Size([3 * d])]  # qkv
        shapes += [torch.Size([d, d]), torch.Size([d])]  # proj
        shapes += [torch.Size([d]), torch.Size([d])]  # ln2
        shapes += [torch.Size([4 * d, d]), torch.Size([4 * d])]  # fc1
        shapes += [torch.Size([d, 4 * d]), torch.Size([d])]  # fc2
    return shapes + [torch.Size([d]), torch.Size([d])]


def few_large(total: int) -> list[torch.Size]:
    return [torch.Size([total // 4 // 1024, 1024])] * 4


def make_params(shapes: list[torch.Size]) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    params = []
    for s in shapes:
        p = torch.nn.Parameter(torch.randn(s, generator=gen) * 0.02)
        p.grad = torch.randn(s, generator=gen) * 1e-3  # fixed gradients
        params.append(p)
    return params


def copy_bandwidth(numel: int = 32 * 2**20, repeats: int = 7) -> float:
    """Bytes per second of ``dst.copy_(src)`` (read + write) on float32 tensors."""
    src, dst = torch.randn(numel), torch.empty(numel)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    return 2 * 4 * numel / min(times)  # the best run: the physical limit, not the contention


def time_steps(opt: torch.optim.Optimizer, warmup: int, repeats: int) -> tuple[float, float]:
    """(first step seconds, median seconds of later steps)."""
    start = time.perf_counter()
    opt.step()
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        opt.step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller models, fewer repeats")
    parser.add_argument("--only", nargs="*", default=None, help="optimizer names to run")
    parser.add_argument("--no-peer", action="store_true", help="skip pytorch-optimizer")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    d, repeats, warmup = (128, 5, 2) if args.quick else (256, 7, 3)
    stack = transformer_stack(d=d)
    n_stack = sum(s.numel() for s in stack)
    models = {"stack": stack, "large": few_large(n_stack)}
    bw = copy_bandwidth()
    print(f"torch {torch.__version__}, 1 thread, compile available: {so.compile_available()}")
    print(f"copy bandwidth: {bw / 1e9:.2f} GB/s (read+write)")
    for name, shapes in models.items():
        n = sum(s.numel() for s in shapes)
        print(f"model {name}: {len(shapes)} tensors, {n / 1e6:.2f} M parameters")
    print()

    header = (
        f"{'model':6} {'optimizer':10} {'impl':22} {'ms/step':>9} {'bound ms':>9} "
        f"{'of limit':>8} {'po/ours':>8} {'ours/(fusedAdamW*B/28)':>23} {'first ms':>9}"
    )
    print(header)
    print("-" * len(header))
    names = args.only or list(OURS)
    for model_name, shapes in models.items():
        n = sum(s.numel() for s in shapes)
        params = make_params(shapes)

        def run(make, params=params):
            for p in params:
                p.data.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
            opt = make(params)
            result = time_steps(opt, warmup, repeats)
            del opt
            gc.collect()
            return result

        _, fused_adamw = run(lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True))
        _, loop_adamw = run(lambda ps: torch.optim.AdamW(ps, lr=1e-3))
        bound28 = n * 28 / bw
        for label, t in (("torch AdamW fused", fused_adamw), ("torch AdamW default", loop_adamw)):
            print(
                f"{model_name:6} {'AdamW':10} {label:22} {t * 1e3:9.2f} {bound28 * 1e3:9.2f} "
                f"{bound28 / t:8.2f} {'':>8} {t / fused_adamw:23.2f} {'':>9}"
            )
        for name in names:
            b = BYTES_PER_PARAM[name]
            bound = n * b / bw
            scaled_fused = fused_adamw * b / 28
            _base.COMPILE_SECONDS.clear()
            first, ours = run(lambda ps, name=name: OURS[name](ps, None))
            _, eager = run(lambda ps, name=name: OURS[name](ps, False))
            peer_make = None if args.no_peer else peer(name)
            peer_t = run(peer_make)[1] if peer_make is not None else float("nan")
            rows = [
                ("steadygrad (compiled)", ours, first),
                ("steadygrad eager", eager, None),
                ("pytorch-optimizer", peer_t, None),
            ]
            for label, t, first_t in rows:
                vs_peer = f"{peer_t / t:8.2f}" if label != "pytorch-optimizer" else f"{'':>8}"
                first_s = f"{first_t * 1e3:9.0f}" if first_t is not None else f"{'':>9}"
                print(
                    f"{model_name:6} {name:10} {label:22} {t * 1e3:9.2f} {bound * 1e3:9.2f} "
                    f"{bound / t:8.2f} {vs_peer} {t / scaled_fused:23.2f} {first_s}"
                )
        del params
        gc.collect()
    print()
    print("of limit: memory-traffic lower bound / time (1.0 = streaming at copy bandwidth)")
    print("po/ours: pytorch-optimizer's time / ours (goal >= 2)")
    print("ours/(fusedAdamW*B/28): time over fused AdamW's time scaled by bytes (goal <= 1.5)")
    print("first ms: first step, including compilation when the kernel is not cached yet")


if __name__ == "__main__":
    main()
