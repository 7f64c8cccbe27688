"""Report time and page size for a long run (1e6 steps) and a large model (5,000 tensors).

Each run is synthesised straight into a run store (random-walk values, a few spikes, NaNs at a
few steps), then the interactive report is written. The baseline, measured in the same process,
is reading every row of the run once with ``Run.rows()``: the report must cost less than
looking at the data. With chromium present, the time until the page has drawn is measured too.

Usage: python bench/report.py [--steps 1000000] [--tensors 5000] [--tensor-steps 500]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

import steadygrad
from steadygrad.report import write_html
from steadygrad.store import RunStore


def synthesise(path: Path, steps: int, tensors: int, seed: int = 0) -> steadygrad.Run:
    """A run with loss, lr, global norms and three per-tensor families over ``tensors``."""
    rng = np.random.default_rng(seed)
    store = RunStore(path, name=f"{steps} steps x {tensors} tensors", flush_every=10**9)
    params = [f"layers.{i // 4}.{('q', 'k', 'v', 'o')[i % 4]}.weight" for i in range(tensors)]
    names = ["loss", "lr/0", "grad_norm", "param_norm", "step_time"]
    names += [f"{fam}/{p}" for fam in ("grad_norm", "param_norm", "update_ratio") for p in params]
    ids = [store._name_id(n) for n in names]  # bench only: bulk rows past the per-step API
    walk = np.exp(np.cumsum(rng.normal(0, 0.01, (steps, len(names))), axis=0))
    walk[rng.integers(0, steps, 5), 0] *= 1e3  # loss spikes the envelope must keep
    walk[rng.integers(0, steps, 3), 2] = np.nan
    chunk = max(1, 2_000_000 // len(names))
    for start in range(0, steps, chunk):
        block = walk[start : start + chunk]
        rows = [
            (start + i, name_id, None if v != v else float(v), float(start + i))
            for i, row in enumerate(block.tolist())
            for name_id, v in zip(ids, row, strict=True)
        ]
        store._db.executemany("INSERT INTO scalars VALUES (?, ?, ?, ?)", rows)
        store._db.commit()
    store.add_findings(
        [steadygrad.Finding("loss_spike", int(s), None, {"z": 12.0}) for s in (steps // 3,)]
    )
    store.close("finished")
    return steadygrad.load(path)


def measure(run: steadygrad.Run, out: Path, browser) -> dict:
    t0 = time.perf_counter()
    rows = len(run.rows())
    read_all = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_html(run, out)
    report = time.perf_counter() - t0
    result = {
        "rows": rows,
        "read every row (baseline) s": round(read_all, 2),
        "report s": round(report, 2),
        "report / baseline": round(report / read_all, 3),
        "page MB": round(out.stat().st_size / 1e6, 2),
    }
    if browser is not None:
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        t0 = time.perf_counter()
        page.goto(out.as_uri())
        page.wait_for_selector("body[data-ready='1']", timeout=120_000)
        result["browser draw s"] = round(time.perf_counter() - t0, 2)
        page.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--tensors", type=int, default=5_000)
    parser.add_argument("--tensor-steps", type=int, default=500)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="steadygrad-bench-report-"))
    chromium = shutil.which("chromium")
    pw = browser = None
    if chromium:
        from playwright.sync_api import sync_playwright

        pw = sync_playwright().start()
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
    try:
        for label, steps, tensors in (
            ("long run", args.steps, 2),
            ("large model", args.tensor_steps, args.tensors),
        ):
            t0 = time.perf_counter()
            run = synthesise(root / label.replace(" ", "_"), steps, tensors)
            made = time.perf_counter() - t0
            result = measure(run, root / f"{label.replace(' ', '_')}.html", browser)
            print(f"{label}: {steps} steps x {tensors} tensors (made in {made:.0f} s): {result}")
    finally:
        if browser is not None:
            browser.close()
            pw.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
