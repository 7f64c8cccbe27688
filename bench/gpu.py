"""GPU checks of issue 15 in one call: the Monitor's overhead on a GPT-2-small-sized training
step, steadygrad's optimizers against torch's fused AdamW, and Hessian-vector-product throughput
with the top eigenvalue against PyHessian; every ratio against a baseline timed in the same run.

Device work is asynchronous: every time below is taken between device synchronisations (a block
of steps, products or updates), so it is what a training loop sees, the Monitor's one transfer
per recorded step included. The CUDA sync debug mode counts the synchronisations of a monitored
step independently of the project's own dispatch-mode test.

Run:  PYTHONPATH=. python bench/gpu.py [--device cuda] [--quick] [--budget 420] [--json PATH]
``--quick`` shrinks every model (a check of the script on a CPU); ``--budget`` is the seconds
the whole script may take: a part started past it is skipped with a note. Peers
(pytorch-optimizer, PyHessian) are optional; a missing one is skipped with a note.
Goals (issue 15): Monitor <= 1.01x on the GPT-2-small step; Stable-SPAM <= 1.5x fused AdamW x
bytes/28.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import json
import pstats
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

import steadygrad
from steadygrad import optim as so
from steadygrad.curvature import hessian_operator, sharpness
from steadygrad.models import MLP, TinyGPT

RESULTS: dict[str, object] = {}
# Minimum bytes read + written per parameter per update in float32 (as in bench/optimizers.py).
BYTES_PER_PARAM = {"AdamW": 28, "SPAM": 28, "AdaBelief": 28, "Grams": 28, "Lion": 20}
BYTES_PER_PARAM |= {"DiffGrad": 36, "AdEMAMix": 36, "StableSPAM": 36}
LR = {"Lion": 1e-4}


class Clock:
    """Wall time between device synchronisations, and the script's own time budget."""

    def __init__(self, device: torch.device, budget: float) -> None:
        self.device, self.deadline = device, time.perf_counter() + budget

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time(self, fn: Callable[[], object], repeats: int = 1) -> float:
        """Seconds per call of ``fn``, ``repeats`` calls between two synchronisations."""
        self.sync()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        self.sync()
        return (time.perf_counter() - start) / repeats

    def left(self, part: str) -> bool:
        if time.perf_counter() < self.deadline:
            return True
        print(f"  {part}: skipped (past the --budget)", flush=True)
        return False


def copy_bandwidth(clock: Clock, numel: int) -> float:
    """Bytes per second of a float32 device-to-device copy, read + write."""
    src = torch.randn(numel, device=clock.device)
    dst = torch.empty_like(src)
    clock.time(lambda: dst.copy_(src))
    return 2 * 4 * numel / min(clock.time(lambda: dst.copy_(src)) for _ in range(5))


# ---------------------------------------------------------------------------- the Monitor


def gpt_step(clock: Clock, quick: bool):
    """A GPT-2-small-sized model (124M parameters at full size), fused AdamW, bf16 autocast on
    CUDA; random tokens, so the run has nothing to find."""
    size = dict(vocab_size=50257, n_layer=12, n_head=12, n_embd=768, block_size=1024)
    if quick:
        size = dict(vocab_size=512, n_layer=2, n_head=2, n_embd=64, block_size=64)
    batch = 4 if quick else 8
    model = TinyGPT(**size).to(clock.device)
    cuda = clock.device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=cuda)
    gen = torch.Generator(clock.device).manual_seed(0)
    tokens = torch.randint(
        size["vocab_size"], (16, batch, size["block_size"] + 1), generator=gen, device=clock.device
    )
    it = iter(range(10**12))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    def step(mon=None) -> None:
        chunk = tokens[next(it) % len(tokens)]
        with autocast:
            loss = model.loss(chunk[:, :-1], chunk[:, 1:])
        loss.backward()
        opt.step()
        if mon is not None:
            mon.step(loss)
        opt.zero_grad(set_to_none=True)

    n = sum(p.numel() for p in model.parameters())
    return f"GPT {n / 1e6:.0f}M parameters, batch {batch}x{size['block_size']}", model, opt, step


# Monitor settings timed against the bare step: the defaults, then each with one part of the
# work taken away, so that the overhead is split by where it comes from.
ARMS = {
    "defaults": {},  # on a GPU, each step finished at the next call (defer)
    "defaults, finished at once": dict(defer=False),
    "no mechanism signals": dict(mechanisms=False),
    "no detectors": dict(detectors=[]),
    "every=10": dict(every=10),
}


def monitor_overhead(clock: Clock, quick: bool, tmp: str, profile: str | None = None) -> None:
    title, model, opt, step = gpt_step(clock, quick)
    steps, rounds, settle = (5, 2, 3) if quick else (20, 5, 30)
    clock.time(step, 5)  # warm-up: kernels chosen, allocator filled
    times: dict[str, list[float]] = {"bare": [], **{arm: [] for arm in ARMS}}
    for r in range(rounds):
        times["bare"].append(clock.time(step, steps))
        for arm, settings in ARMS.items():
            mon = steadygrad.Monitor(model, opt, f"{tmp}/{arm}-{r}", progress=False, **settings)
            clock.time(lambda mon=mon: step(mon), settle)  # past a new run's start-up cadences
            times[arm].append(clock.time(lambda mon=mon: step(mon), steps))
            if r == rounds - 1 and arm == "defaults":
                syncs, where = sync_count(clock, lambda mon=mon: step(mon), 60)
                host = host_time(clock, model, opt, step, mon, profile)
            mon.close()
    b = statistics.median(times["bare"])
    print(f"\nMonitor on {clock.device.type}: {title}")
    print(f"  {rounds} rounds of {steps}-step blocks, monitored blocks after {settle} steps")
    print(f"  {'':28}{'ms/step':>9}{'ratio':>9}")
    print(f"  {'bare':28}{b * 1e3:9.2f}")
    result = RESULTS["monitor"] = dict(model=title, bare_ms=b * 1e3)
    for arm in ARMS:
        m = statistics.median(times[arm])
        print(f"  {arm:28}{m * 1e3:9.2f}{m / b:9.4f}")
        result[arm] = dict(ms=m * 1e3, ratio=m / b)
    print("  goal at the defaults: <= 1.01x")
    print(f"  host work in mon.step once the device is idle: {host * 1e3:.2f} ms per step")
    print(f"  synchronisations per step over 60 monitored steps: {syncs}")
    for line, count in where.most_common(8):
        print(f"    {count:4d} at {line}")
    result |= dict(host_ms=host * 1e3, syncs=syncs, sync_sites=dict(where))


def host_time(clock: Clock, model, opt, step, mon, profile: str | None = None) -> float:
    """Median host seconds of ``mon.step`` entered with the device idle: its own work (the
    transfer, the detectors, the store), without the wait for the step's kernels. With
    ``profile``, cProfile's statistics of those calls are written there and summarised."""
    seconds = []
    original = mon.step
    profiler = cProfile.Profile() if profile else None

    def timed(loss):
        clock.sync()
        start = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        original(loss)
        if profiler is not None:
            profiler.disable()
        seconds.append(time.perf_counter() - start)

    mon.step = timed
    try:
        for _ in range(30 if profile else 10):
            step(mon)
    finally:
        mon.step = original
    if profiler is not None:
        profiler.dump_stats(profile)
        stats = pstats.Stats(profiler, stream=sys.stdout)
        stats.sort_stats("cumulative").print_stats("steadygrad", 30)
        stats.sort_stats("tottime").print_stats(20)
    return statistics.median(seconds)


def sync_count(clock: Clock, fn: Callable[[], object], steps: int):
    """Synchronising CUDA calls per call of ``fn``, as torch's sync debug mode reports them,
    and the lines that made them."""
    where: collections.Counter[str] = collections.Counter()
    if clock.device.type != "cuda":
        return "n/a (not CUDA)", where
    counts = []
    for _ in range(steps):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fn()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        where.update(f"{w.filename}:{w.lineno}" for w in syncs)
        counts.append(len(syncs))
    return collections.Counter(counts), where


# ---------------------------------------------------------------------------- optimizers


def optimizer_table(clock: Clock, shapes: list[torch.Size], quick: bool) -> None:
    """Median update time of each of steadygrad's optimizers (compiled where torch.compile
    works, and its multi-tensor eager path) and pytorch-optimizer's, next to torch's fused
    AdamW on the same parameters, in interleaved rounds."""
    bandwidth = copy_bandwidth(clock, 2**22 if quick else 2**28)
    numel = sum(s.numel() for s in shapes)
    floor_ms = 28 * numel / bandwidth * 1e3
    print(
        f"\nOptimizer updates on {clock.device.type}: {len(shapes)} tensors, {numel / 1e6:.0f}M "
        f"parameters; copy bandwidth {bandwidth / 1e9:.0f} GB/s, AdamW's floor {floor_ms:.3f} ms"
    )
    print(f"  {'optimizer':26}{'first s':>9}{'ms':>9}{'x fused AdamW':>15}{'x bytes/28':>12}")
    try:
        import pytorch_optimizer as po
    except ImportError:
        po = None
        print("  pytorch-optimizer is not installed: its rows are skipped")
    fused = clock.device.type == "cuda"
    table = RESULTS.setdefault("optimizers", {})
    for name in BYTES_PER_PARAM:
        if name == "AdamW" or not clock.left(name):
            continue
        lr = LR.get(name, 1e-3)
        build = {"torch AdamW fused": lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=fused)}
        build[f"{name} (default)"] = lambda ps, n=name, lr=lr: getattr(so, n)(ps, lr=lr)
        build[f"{name} (eager foreach)"] = lambda ps, n=name, lr=lr: getattr(so, n)(
            ps, lr=lr, fused=False
        )
        if po is not None:
            build[f"{name} pytorch-optimizer"] = lambda ps, n=name, lr=lr: getattr(po, n)(ps, lr=lr)
        times = interleaved(clock, build, shapes, rounds=3 if quick else 7)
        base = times["torch AdamW fused"][1]
        for label, (first, ms) in times.items():
            scaled = ms / base * 28 / BYTES_PER_PARAM[name if "AdamW" not in label else "AdamW"]
            print(f"  {label:26}{first:9.2f}{ms:9.3f}{ms / base:15.2f}{scaled:12.2f}", flush=True)
            table.setdefault(name, {})[label] = dict(first_s=first, ms=ms, x_fused_adamw=ms / base)


def interleaved(clock: Clock, build: dict, shapes: list[torch.Size], rounds: int) -> dict:
    """(first step seconds, median ms of 10 updates) per optimizer, each on its own copy of
    the parameters with fixed gradients, timed round by round in turn."""
    gen = torch.Generator(clock.device).manual_seed(0)
    opts = {}
    for label, make in build.items():
        params = []
        for s in shapes:
            p = torch.nn.Parameter(torch.randn(s, generator=gen, device=clock.device) * 0.02)
            p.grad = torch.randn(s, generator=gen, device=clock.device) * 1e-3
            params.append(p)
        opts[label] = make(params)
    first = {label: clock.time(opt.step) for label, opt in opts.items()}  # compiles, states
    for opt in opts.values():
        clock.time(opt.step, 3)
    times: dict[str, list[float]] = {label: [] for label in opts}
    for _ in range(rounds):
        for label, opt in opts.items():
            times[label].append(clock.time(opt.step, 10) * 1e3)
    return {label: (first[label], statistics.median(t)) for label, t in times.items()}


# ---------------------------------------------------------------------------- curvature


def mlp_problem(clock: Clock, width: int, batch: int):
    torch.manual_seed(0)
    model = MLP(64, [width, width], 10).to(clock.device)
    gen = torch.Generator(clock.device).manual_seed(0)
    x = torch.randn(batch, 64, generator=gen, device=clock.device)
    y = torch.randint(10, (batch,), generator=gen, device=clock.device)
    return model, (x, y)


def loss_fn(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


def curvature_table(clock: Clock, quick: bool) -> None:
    """Products per second by engine (and 10 vectors batched), then the top eigenvalue to 1e-3
    and the top five, against PyHessian and against float64 Lanczos run to 1e-10."""
    sizes = [(480, 512), (4096, 4096)] if not quick else [(64, 128)]
    try:
        from pyhessian import hessian as pyhessian
    except ImportError:
        pyhessian = None
        print("\nPyHessian is not installed: its rows are skipped")
    table = RESULTS.setdefault("curvature", {})
    for width, batch in sizes:
        if not clock.left(f"curvature, width {width}"):
            continue
        model, data = mlp_problem(clock, width, batch)
        n = sum(p.numel() for p in model.parameters())
        print(
            f"\nCurvature on {clock.device.type}: MLP 64-{width}-{width}-10 ({n / 1e6:.2f}M "
            f"parameters), batch {batch}"
        )
        rows = table.setdefault(f"mlp{width}", {})
        vs = torch.randn(10, n, device=clock.device)
        for engine in ("retained", "func", "double_backward"):
            with hessian_operator(model, loss_fn, data, engine=engine) as op:
                single = clock.time(lambda op=op, vs=vs: [op.matvec(v) for v in vs], 3) / 10
                rows[engine] = dict(products_per_s=1 / single)
                line = f"  {engine:16} {1 / single:9.0f} products/s"
                if engine != "double_backward":
                    batched = clock.time(lambda op=op, vs=vs: op.matmat(vs), 3) / 10
                    rows[engine]["batched10_per_s"] = 1 / batched
                    line += f", 10 batched: {1 / batched:9.0f}/s ({single / batched:.2f}x)"
                print(line, flush=True)
        truth = sharpness(
            model.double(), loss_fn, (data[0].double(), data[1]), k=5, tol=1e-10, max_matvecs=400
        ).eigenvalues.tolist()
        model.float()
        for k in (1, 5):
            ours_s = min(
                clock.time(lambda k=k, m=model, d=data: sharpness(m, loss_fn, d, k=k, tol=1e-3))
                for _ in range(3)
            )
            result = sharpness(model, loss_fn, data, k=k, tol=1e-3)
            err = max(
                abs(a - b) / abs(b)
                for a, b in zip(result.eigenvalues.tolist(), truth[:k], strict=True)
            )
            line = (
                f"  top-{k} to 1e-3: steadygrad {ours_s * 1e3:8.1f} ms, {result.matvecs} "
                f"products, rel. error {err:.1e}"
            )
            rows[f"top{k}"] = dict(ms=ours_s * 1e3, products=result.matvecs, error=err)
            if pyhessian is not None:
                h = pyhessian(
                    model, torch.nn.CrossEntropyLoss(), data=data, cuda=model_on_cuda(model)
                )
                peer_s = min(clock.time(lambda h=h, k=k: h.eigenvalues(top_n=k)) for _ in range(2))
                peer = h.eigenvalues(top_n=k)[0]
                perr = max(abs(a - b) / abs(b) for a, b in zip(peer, truth[:k], strict=True))
                line += (
                    f"; PyHessian {peer_s * 1e3:8.1f} ms (err {perr:.1e}): {peer_s / ours_s:.1f}x"
                )
                rows[f"top{k}"] |= dict(pyhessian_ms=peer_s * 1e3, pyhessian_error=perr)
            print(line, flush=True)


def model_on_cuda(model: torch.nn.Module) -> bool:
    return next(model.parameters()).device.type == "cuda"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small models: checks the script")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for the script")
    parser.add_argument("--json", default=None, help="write the figures to this file")
    parser.add_argument(
        "--profile", default=None, help="cProfile mon.step's host work to this file"
    )
    parser.add_argument("--only", choices=("monitor", "optimizers", "curvature"), default=None)
    args = parser.parse_args()
    if args.budget <= 0:
        parser.error(f"--budget must be > 0, got {args.budget}")
    clock = Clock(torch.device(args.device), args.budget)
    name = torch.cuda.get_device_name(clock.device) if clock.device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__} on {name}", flush=True)
    RESULTS["device"], RESULTS["torch"] = name, torch.__version__
    shapes = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if args.only in (None, "monitor"):
                monitor_overhead(clock, args.quick, tmp, args.profile)
            if args.only in (None, "optimizers") and clock.left("optimizers"):
                _, model, _, _ = gpt_step(clock, args.quick)
                shapes = [p.shape for p in model.parameters()]
                del model
                optimizer_table(clock, shapes, args.quick)
            if args.only in (None, "curvature") and clock.left("curvature"):
                curvature_table(clock, args.quick)
    finally:
        if args.json:
            with open(args.json, "w") as f:
                json.dump(RESULTS, f, indent=1)


if __name__ == "__main__":
    main()
