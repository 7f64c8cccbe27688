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


def eight_bit_report(epochs: int = 6) -> None:
    """Memory of 8-bit vs 32-bit states and the deviation of the training trajectory."""
    from steadygrad.data import load_digits
    from steadygrad.models import MLP
    from steadygrad.optim import _quant8

    x_train, y_train, x_test, y_test = load_digits()

    def train(name: str, bits: int):
        torch.manual_seed(0)
        model = MLP(64, [1024, 256], 10)
        start = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        opt = OURS_8BIT[name](model.parameters(), bits)
        gen = torch.Generator().manual_seed(0)
        for _ in range(epochs):
            for idx in torch.randperm(len(x_train), generator=gen).split(128)[:12]:
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
                opt.step()
        end = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        with torch.no_grad():
            acc = (model(x_test).argmax(1) == y_test).float().mean().item()
        mem = sum(_quant8.state_bytes(s) for s in opt.state.values())
        return start, end, acc, mem

    print()
    print(
        f"8-bit states (block {_quant8.BLOCK_SIZE}, dynamic map; tensors >= "
        f"{_quant8.MIN_NUMEL} entries), MLP 64-1024-256-10 on digits, {epochs * 12} steps"
    )
    print(
        f"{'optimizer':10} {'state KB 32':>11} {'state KB 8':>10} {'ratio':>6} "
        f"{'deviation':>9} {'acc 32':>7} {'acc 8':>7}"
    )
    for name in OURS_8BIT:
        start, end32, acc32, mem32 = train(name, 32)
        _, end8, acc8, mem8 = train(name, 8)
        dev = ((end8 - end32).norm() / (end32 - start).norm()).item()
        print(
            f"{name:10} {mem32 / 1024:11.0f} {mem8 / 1024:10.0f} {mem8 / mem32:6.3f} "
            f"{dev:9.3f} {acc32:7.3f} {acc8:7.3f}"
        )
    print("deviation: ||p_8bit - p_32bit|| / ||p_32bit - p_start|| at the end of training")


OURS_8BIT = {
    "SPAM": lambda ps, b: so.SPAM(ps, lr=1e-2, state_bits=b, fused=False),
    "StableSPAM": lambda ps, b: so.StableSPAM(ps, lr=1e-2, state_bits=b, fused=False),
    "AdaBelief": lambda ps, b: so.AdaBelief(ps, lr=1e-2, state_bits=b, fused=False),
    "DiffGrad": lambda ps, b: so.DiffGrad(ps, lr=1e-2, state_bits=b, fused=False),
    "AdEMAMix": lambda ps, b: so.AdEMAMix(ps, lr=1e-2, state_bits=b, fused=False),
    "Grams": lambda ps, b: so.Grams(ps, lr=1e-2, state_bits=b, fused=False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller models, fewer repeats")
    parser.add_argument("--only", nargs="*", default=None, help="optimizer names to run")
    parser.add_argument("--no-peer", action="store_true", help="skip pytorch-optimizer")
    parser.add_argument("--eight-bit-only", action="store_true", help="only the 8-bit report")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    if args.eight_bit_only:
        eight_bit_report()
        return
    d, repeats, warmup = (128, 5, 2) if args.quick else (256, 11, 3)
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
            # the machine is shared: re-measure the baseline next to each optimizer, so each
            # ratio compares times taken in the same few seconds
            _, fused_now = run(lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True))
            scaled_fused = fused_now * b / 28
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
    print(
        "ours/(fusedAdamW*B/28): time over fused AdamW's time (re-measured just before each"
        " optimizer) scaled by bytes (goal <= 1.5)"
    )
    print("first ms: first step, including compilation when the kernel is not cached yet")
    print("compile seconds by kernel:", {k: round(v, 1) for k, v in _base.COMPILE_SECONDS.items()})
    eight_bit_report()


if __name__ == "__main__":
    main()
