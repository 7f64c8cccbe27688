"""Forks run writers and SIGKILLs each at a random moment; prints one JSON line per kill.

Run by tests/test_store_crash.py as ``python _store_crash_driver.py BASE KILLS CREATION_KILLS
SNAPSHOT_KILLS SEED``. The first CREATION_KILLS kills land while the writer is creating its store
(a delay drawn below the measured creation time, in a window narrowed each time a kill lands too
late); the others while it writes. Then SNAPSHOT_KILLS kills of a training loop whose autopilot
writes a snapshot to disk at every step. Forking from this small, single-threaded process keeps
each kill cheap (no interpreter start-up per kill).
"""

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

from steadygrad.store import RunStore

FLUSH_EVERY = 5
NAMES = [f"m{i}" for i in range(40)]


def value(step: int, i: int) -> float:
    return step + i / 64  # exact in binary, so the test can compare exactly


def writer(run_dir: Path, report: int) -> None:
    os.write(report, b"start\n")
    store = RunStore(run_dir, name="crash", flush_every=FLUSH_EVERY, flush_seconds=1e9)
    os.write(report, b"created\n")
    step = 0
    while True:
        store.add_scalars(step, {n: value(step, i) for i, n in enumerate(NAMES)})
        if (step + 1) % FLUSH_EVERY == 0:  # this call handed steps step-4..step to the writer
            os.write(report, f"{step}\n".encode())
        step += 1
        time.sleep(0.0005)


def trainer(run_dir: Path, report: int) -> None:
    import torch

    import steadygrad

    os.write(report, b"start\n")
    torch.set_num_threads(1)  # a forked child must not use the parent's thread pool
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(384, 384), torch.nn.Linear(384, 8))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    pilot = steadygrad.Autopilot(snapshot_every=1, snapshot_dir=run_dir / "snapshots")
    mon = steadygrad.Monitor(
        model,
        opt,
        run_dir,
        autopilot=pilot,
        flush_every=FLUSH_EVERY,
        flush_seconds=1e9,
        progress=False,
    )
    os.write(report, b"created\n")
    step = 0
    while True:
        loss = model(torch.randn(16, 384)).pow(2).mean()
        loss.backward()
        opt.step()
        mon.step(loss)
        opt.zero_grad()
        if (step + 1) % FLUSH_EVERY == 0:
            os.write(report, f"{step}\n".encode())
        step += 1


def kill_one(run_dir: Path, delay: float, target=writer) -> dict:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            target(run_dir, write)
        finally:
            os._exit(1)
    os.close(write)
    seen = b""
    while b"start\n" not in seen:
        seen += os.read(read, 1)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    while chunk := os.read(read, 65536):
        seen += chunk
    os.close(read)
    lines = seen.decode().split()
    handed = [int(x) for x in lines if x.isdigit()]
    snapshots = run_dir / "snapshots"
    return {
        "dir": str(run_dir),
        "delay": delay,
        "created": "created" in lines,
        "last_handed_off": handed[-1] if handed else None,
        "snapshot_temp_left": snapshots.is_dir() and any(snapshots.glob(".*.tmp")),
    }


def main() -> None:
    base = Path(sys.argv[1])
    kills, creation_kills, snapshot_kills, seed = map(int, sys.argv[2:6])
    rng = random.Random(seed)
    # How long a warm creation takes (the forked writers' are warm: the first one here pays
    # for the imports and caches alone, and a window measured on it let kills land after it)
    RunStore(base / "warm-up").close()
    times = []
    for i in range(3):
        started = time.perf_counter()
        RunStore(base / f"calibration{i}").close()
        times.append(time.perf_counter() - started)
    creation = sorted(times)[1]
    window = creation  # for kills meant to land during creation
    for i in range(kills):
        if i < creation_kills:
            delay = rng.uniform(0.0, window)
        else:
            delay = rng.uniform(creation, creation + 0.25)
        kill = kill_one(base / f"kill{i:02d}", delay)
        if i < creation_kills and kill["created"]:
            # A loaded machine's forked creation can run faster than the calibration measured:
            # narrow the window so that the creation kills still land during creation.
            window *= 0.7
        print(json.dumps(kill), flush=True)
    # torch loads its compiler at its first optimizer (seconds, once a process): loaded here,
    # as the interpreter is, so that a forked trainer is writing snapshots within the delays
    import torch

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    for i in range(snapshot_kills):
        delay = rng.uniform(0.2, 0.9)
        print(json.dumps(kill_one(base / f"snapshot{i:02d}", delay, trainer)), flush=True)


if __name__ == "__main__":
    main()
