"""Run held-out scenarios with a stand-in context that attaches nothing (no steadygrad): how a
blind set's writer checks that each fault really happens without ever seeing what steadygrad
says of it (see ``scenarios/heldout_brief.md``).

usage (from bench/):  PYTHONPATH=. python standin.py cases_heldoutN [name-substring]
Prints, for each scenario: its checks, whether all hold, the loss every ~10% of the run, seconds.
"""

import importlib
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from scenarios.common import SCENARIOS, Context


class _Nothing:
    closed = False

    def step(self, *a, **k):
        pass

    def close(self):
        self.closed = True

    def __getattr__(self, name):
        return lambda *a, **k: None


class StandIn(Context):
    def attach(self, model, optimizer, *, probe=None, scaler=None):
        self.monitor = _Nothing()
        return self.monitor


def main() -> None:
    torch.set_num_threads(1)
    module = sys.argv[1]
    before = set(SCENARIOS)
    importlib.import_module(f"scenarios.{module}")
    names = [n for n in SCENARIOS if n not in before] or [
        n for n in SCENARIOS if SCENARIOS[n].run.__module__.endswith(module)
    ]
    if len(sys.argv) > 2:
        names = [n for n in names if sys.argv[2] in n]
    for name in names:
        sc = SCENARIOS[name]
        ctx = StandIn("default", Path(tempfile.mkdtemp()))
        t = time.time()
        err = None
        try:
            sc.run(ctx)
        except Exception as exc:  # noqa: BLE001
            err = f"{type(exc).__name__}: {exc}"
        dt = time.time() - t
        ls = ctx.losses
        k = max(1, len(ls) // 10)
        trace = " ".join(f"{i}:{v:.3g}" for i, v in list(enumerate(ls))[::k])
        first_bad = next((i for i, v in enumerate(ls) if not math.isfinite(v)), None)
        ok = all(ctx.checks.values()) and bool(ctx.checks)
        print(
            f"== {name}  cause={sc.cause} where={sc.where} diverges={sc.diverges} "
            f"onset={sc.onset}  {dt:.1f}s  steps={len(ls)}  first non-finite={first_bad}"
        )
        print(f"   checks {'ALL HOLD' if ok else 'FAIL'}: {ctx.checks}")
        print(f"   loss: {trace}")
        if err:
            print(f"   ERROR: {err}")


if __name__ == "__main__":
    main()
