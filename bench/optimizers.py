"""Benchmark: median ``optimizer.step()`` time of steadygrad's optimizers against torch's AdamW
(fused and default) and pytorch-optimizer's implementation of the same algorithm, on a stack of
many small tensors and on a few large tensors, with the memory-traffic lower bound.

Run: ``PYTHONPATH=. python bench/optimizers.py [--quick]`` (single thread, CPU). Implementations
of one optimizer are timed in interleaved rounds (medians), so machine load hits them alike.
``STEADYGRAD_NO_COMPILE=1`` times the fallback a machine without torch.compile gets.
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
    "SPAM": lambda ps, f, **kw: so.SPAM(ps, lr=1e-3, fused=f, **kw),
    "StableSPAM": lambda ps, f, **kw: so.StableSPAM(ps, lr=1e-3, fused=f, **kw),
    "AdaBelief": lambda ps, f, **kw: so.AdaBelief(ps, lr=1e-3, fused=f, **kw),
    "DiffGrad": lambda ps, f, **kw: so.DiffGrad(ps, lr=1e-3, fused=f, **kw),
    "Lion": lambda ps, f, **kw: so.Lion(ps, lr=1e-4, fused=f, **kw),
    "AdEMAMix": lambda ps, f, **kw: so.AdEMAMix(ps, lr=1e-3, fused=f, **kw),
    "Grams": lambda ps, f, **kw: so.Grams(ps, lr=1e-3, fused=f, **kw),
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


def interleaved(opts: dict[str, torch.optim.Optimizer], warmup: int, rounds: int):
    """Median seconds of ``step()`` per optimizer: ``warmup`` steps each (compilation), then
    ``rounds`` rounds of one step of each, in turn.

    Each optimizer should own its parameters (see :func:`make_params`): some implementations
    rewrite ``p.grad`` in place (pytorch-optimizer's Stable-SPAM stores its clipped, rescaled
    gradient there), so shared gradients would drift from step to step under all of them. The
    gradients are put back before every step, outside the clock, as a fresh backward would."""
    saved = {
        label: [(p.grad, p.grad.clone()) for g in opt.param_groups for p in g["params"]]
        for label, opt in opts.items()
    }

    def restore(label: str) -> None:
        grads, copies = zip(*saved[label], strict=True)
        torch._foreach_copy_(list(grads), list(copies))

    for label, opt in opts.items():
        for _ in range(warmup):
            restore(label)
            opt.step()
    times: dict[str, list[float]] = {k: [] for k in opts}
    for _ in range(rounds):
        for label, opt in opts.items():
            restore(label)
            start = time.perf_counter()
            opt.step()
            times[label].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


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


def small_model_report(steps: int = 200) -> None:
    """A small model's run (an MLP of ~70k parameters, ``steps`` steps) with the default
    ``fused=None`` (eager below ``COMPILE_FROM``) and with ``fused=True``: the first step (which
    pays any compilation), the median later step, and the whole run, as ratios compiled/default
    measured here."""
    x = torch.randn(64, 32)
    rows = {}
    for label, fused in (("default (fused=None)", None), ("compiled (fused=True)", True)):
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(32, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256)
        )
        opt = so.Lion(model.parameters(), lr=1e-4, fused=fused)
        times = []
        for _ in range(steps):
            model(x).square().mean().backward()
            start = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - start)
            opt.zero_grad()
        rows[label] = (times[0], statistics.median(times[1:]), sum(times))
    print(f"\nsmall model ({sum(p.numel() for p in model.parameters()) / 1e3:.0f}k parameters),")
    print(f"Lion, {steps} steps: first step s, median later step ms, whole run s")
    for label, (first, later, total) in rows.items():
        print(f"  {label:24} {first:8.3f} {1e3 * later:8.3f} {total:8.2f}")
    (f0, l0, t0), (f1, l1, t1) = rows.values()
    print(
        f"  compiled/default: first step {f1 / f0:.0f}x, later steps {l1 / l0:.2f}x, run {t1 / t0:.1f}x"
    )


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
    parser.add_argument("--no-eight-bit", action="store_true", help="skip the 8-bit report")
    parser.add_argument(
        "--per-tensor", action="store_true", help="also time the per-tensor eager loop (slow)"
    )
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
        f"{'model':6} {'optimizer':10} {'impl':26} {'ms/step':>9} {'bound ms':>9} "
        f"{'of limit':>8} {'po/ours':>8} {'ours/(fusedAdamW*B/28)':>23}"
    )
    print(header)
    print("-" * len(header))
    names = args.only or list(OURS)
    compiled = so.compile_available()
    for model_name, shapes in models.items():
        n = sum(s.numel() for s in shapes)
        for name in names:
            b = BYTES_PER_PARAM[name]
            bound = n * b / bw
            # every implementation steps once per round, rounds interleaved, medians kept: the
            # machine is shared, and load then hits all implementations alike
            makers = {"torch AdamW fused": lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True)}
            if compiled:
                makers["steadygrad compiled"] = lambda ps, name=name: OURS[name](ps, True)
            makers["steadygrad foreach (eager)"] = lambda ps, name=name: OURS[name](ps, False)
            if args.per_tensor:
                makers["steadygrad per-tensor loop"] = lambda ps, name=name: OURS[name](
                    ps, False, foreach=False
                )
            peer_make = None if args.no_peer else peer(name)
            if peer_make is not None:
                makers["pytorch-optimizer"] = peer_make
            # each implementation owns its parameters and gradients (the same values)
            opts = {k: make(make_params(shapes)) for k, make in makers.items()}
            times = interleaved(opts, warmup, repeats)
            del opts
            gc.collect()
            fused, po = times["torch AdamW fused"], times.get("pytorch-optimizer", float("nan"))
            for label, t in times.items():
                if label == "torch AdamW fused":
                    vs_peer, vs_fused = "", f"{'x B/28 = ' + f'{t * b / 28 * 1e3:.2f} ms':>23}"
                else:
                    vs_peer = f"{po / t:8.2f}" if label != "pytorch-optimizer" else ""
                    vs_fused = f"{t / (fused * b / 28):23.2f}"
                print(
                    f"{model_name:6} {name:10} {label:26} {t * 1e3:9.2f} {bound * 1e3:9.2f} "
                    f"{bound / t:8.2f} {vs_peer:>8} {vs_fused}"
                )
        gc.collect()
    print()
    print("of limit: memory-traffic lower bound / time (1.0 = streaming at copy bandwidth)")
    print(
        "po/ours: pytorch-optimizer's time / ours (goal >= 2 for the foreach path, the fallback"
        " without torch.compile)"
    )
    print(
        "ours/(fusedAdamW*B/28): time over fused AdamW's time (same rounds) scaled by bytes"
        " (goal <= 1.5 for the compiled path)"
    )
    print(f"times: medians of {repeats} interleaved rounds after {warmup} warm-up steps")
    print("compile seconds by kernel:", {k: round(v, 1) for k, v in _base.COMPILE_SECONDS.items()})
    if compiled:
        small_model_report()
    if not args.no_eight_bit:
        eight_bit_report()


if __name__ == "__main__":
    main()
