"""How often steadygrad's diagnosis names the right cause, the right place, early enough, and
keeps quiet on healthy runs, over the induced instabilities of ``bench/scenarios``.

Each scenario runs twice: with the README's one-line attach (``default``) and with every opt-in
signal switched on (``optin``: attention logits, output logits, softmax collapse, plasticity, and
the sharpness probe where the scenario has a loss function at hand).

    python bench/diagnosis_accuracy.py                       # everything, 2 processes
    python bench/diagnosis_accuracy.py --only lr_fast_mlp_sgd --verbose
    python bench/diagnosis_accuracy.py --modes default --jobs 1 --skip-heldout
    python bench/diagnosis_accuracy.py --file cases_heldout --jobs 1   # one case file
    python bench/diagnosis_accuracy.py --keep runs/kept --json old.json   # then, rules changed:
    python bench/diagnosis_accuracy.py --from-json old.json --rejudge runs/kept --json new.json

Columns (per mode):
    right cause first     the top diagnosis is the true cause (unhealthy scenarios)
    right cause anywhere  some diagnosis is the true cause
    location named        of scenarios with a true place: the right-cause diagnosis (else the
                          top one) lists the module, or a parent / child of it
    warned before         of diverging scenarios: a warning-or-worse right-cause diagnosis
                          (its first_step) or finding (kinds mapped to the cause) at or before
                          the divergence step; the median lead in steps; and how many of those
                          whose fault starts >= 50 steps before the divergence (the scenario's
                          ``onset``) were warned >= 50 steps ahead; "at the time" counts only
                          findings (what the run printed as it went), not a diagnosis's
                          first_step, which can date a cause back after the fact
    healthy w/ warning    healthy controls with any warning-or-worse finding or diagnosis
    monitor raised        runs where mon.step() raised into the training loop (steadygrad must
                          never harm the run; the bench then stops stepping the monitor)
    fault not induced     runs whose own check says the induced fault did not happen (their
                          truth is wrong: they are left out of the rows above)

Per-scenario rows: hit = 1st (right cause first), any (right cause ranked lower), no; for a
healthy control ok / FA (false alarm); a trailing ! marks a fault not induced. loc = y / n / -
(no place). lead = steps between the first right-cause warning and the divergence, no (none
before it), - (the run does not diverge).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

SEVERITY = {"info": 0, "warning": 1, "critical": 2}
MODES = ("default", "optin")


# -- which finding kinds feed which cause ---------------------------------------------------------


def kind_causes(run, kinds: set[str]) -> dict[str, set[str]]:
    """For each finding kind in the run, the causes whose rule fires on that kind alone.

    Asked of the rules themselves: the kinds a rule declares it reads, and each rule's check run
    on the run with only one kind's findings left; so the mapping follows the rules as they
    change. A kind no rule takes maps to the cause of the same name.
    """
    from steadygrad.diagnose import rules as R

    out: dict[str, set[str]] = {k: set() for k in kinds}
    for rule in R.RULES:  # rules that declare the finding kinds they read
        for declared in getattr(rule, "kinds", ()) or ():
            name = getattr(declared, "name", declared)
            if name in out:
                out[name].add(rule.cause)
    try:
        every = list(run.findings())
        for kind in sorted(kinds):
            # facts of their own for each kind: what they cache (where the run broke, where
            # its loss began to climb) is then that kind's alone, whichever kind came first
            facts = R.RunFacts(run)
            facts.findings = [f for f in every if f.kind == kind]
            for rule in R.RULES:
                try:
                    if rule.check(facts) is not None:
                        out[kind].add(rule.cause)
                except Exception:  # a rule that needs more than one kind: not this kind's cause
                    pass
    except Exception:
        pass
    for kind in kinds:
        if not out[kind]:
            out[kind] = {kind}
    return out


def same_place(a: str, b: str) -> bool:
    """Equal, or one is a dotted parent of the other ('h.0.attn' ~ 'h.0.attn.c_attn')."""
    a, b = a.strip(), b.strip()
    if not a or not b:
        return False
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def measured_divergence(losses: list[float]) -> int | None:
    """First non-finite loss, or the first step whose 5-step median loss is over twice the best
    5-step median so far and at least 1.0 above it (a relative rise that is also material)."""
    best = math.inf
    for t, value in enumerate(losses):
        if not math.isfinite(value):
            return t
        window = [v for v in losses[max(0, t - 4) : t + 1]]
        med = statistics.median(window)
        if t >= 4 and med > max(2 * best, best + 1.0):
            return t
        if t >= 4:
            best = min(best, med)
    return None


# -- one scenario, one mode -----------------------------------------------------------------------


def run_one(name: str, mode: str, root: str) -> dict:
    import torch

    torch.set_num_threads(1)
    os.environ["STEADYGRAD_STRICT"] = "1"  # a failure of the Monitor's own shows as raised
    from scenarios import SCENARIOS
    from scenarios.common import Context

    sc = SCENARIOS[name]
    run_dir = Path(root) / mode / name
    ctx = Context(mode, run_dir)
    row: dict = {
        "scenario": name,
        "mode": mode,
        "family": sc.family,
        "optimizer": sc.optimizer,
        "true_cause": sc.cause,
        "true_where": list(sc.where),
        "heldout": sc.heldout,
        "error": None,
    }
    t0 = time.perf_counter()
    try:
        sc.run(ctx)
    except Exception:
        row["error"] = traceback.format_exc(limit=4)
    finally:
        try:
            ctx.close()
        except Exception:
            row["error"] = (row["error"] or "") + traceback.format_exc(limit=2)
    row["seconds"] = round(time.perf_counter() - t0, 2)
    row["steps"] = len(ctx.losses)
    row["monitor_raised"] = ctx.monitor_error
    n = len(ctx.losses)
    row["loss_trace"] = [(t, round(ctx.losses[t], 4)) for t in range(0, n, max(1, n // 20))]
    diverges = sc.diverges
    if diverges == "auto":
        diverges = measured_divergence(ctx.losses)
    row["diverge_step"] = diverges
    row["room"] = None if diverges is None else diverges - sc.onset
    if sc.diverges == "auto":
        ctx.check("diverged", diverges is not None)
    row["checks"] = ctx.checks
    row["induced"] = all(ctx.checks.values())
    if ctx.monitor is None:
        return row
    return judged(row, sc, ctx.monitor.run_dir)


def judged(row: dict, sc, run_dir: Path) -> dict:  # noqa: ANN001 - a scenarios.Scenario
    """``row`` (what the run did: its checks, its divergence step) with what the diagnosis of
    the stored run at ``run_dir`` says about it: the cause first and anywhere, the place, the
    lead, the warnings."""
    import steadygrad

    run = steadygrad.load(run_dir)
    report = steadygrad.diagnose(run)
    findings = run.findings()
    diags = [
        {
            "cause": d.cause,
            "severity": d.severity,
            "first_step": d.first_step,
            "where": list(d.where)[:12],
        }
        for d in report.diagnoses
    ]
    row["diagnoses"] = diags
    row["top"] = diags[0]["cause"] if diags else "healthy"
    causes = [d["cause"] for d in diags]
    row["finding_kinds"] = sorted({f.kind for f in findings})
    warn = [f for f in findings if SEVERITY.get(str(f.severity), 0) >= 1]
    row["warnings"] = len(warn)
    row["warning_kinds"] = sorted({f.kind for f in warn})

    if sc.healthy:
        row["warned"] = bool(warn) or any(SEVERITY[d["severity"]] >= 1 for d in diags)
        return row

    row["first"] = bool(causes) and causes[0] == sc.cause
    row["anywhere"] = sc.cause in causes
    right = next((d for d in diags if d["cause"] == sc.cause), None)
    if sc.where:
        named = (right or (diags[0] if diags else {"where": []}))["where"]
        row["located"] = any(same_place(w, t) for w in named for t in sc.where)
    diverges = row.get("diverge_step")
    if diverges is not None:
        steps = []
        if right is not None and right["first_step"] is not None and SEVERITY[right["severity"]]:
            steps.append(right["first_step"])
        mapping = kind_causes(run, {f.kind for f in warn})
        found = [f.step for f in warn if sc.cause in mapping[f.kind] and f.step <= diverges]
        steps = [s for s in steps + found if s <= diverges]
        row["lead"] = diverges - min(steps) if steps else None
        # what the run printed while it ran, not a diagnosis dated back after the fact
        row["live_lead"] = diverges - min(found) if found else None
    return row


def _run_star(args: tuple[str, str, str]) -> dict:
    return run_one(*args)


# -- the table ------------------------------------------------------------------------------------


def summarise(rows: list[dict], mode: str) -> dict:
    mine = [r for r in rows if r["mode"] == mode and r.get("error") is None]
    sick = [r for r in mine if r["true_cause"] != "healthy" and r.get("induced", True)]
    placed = [r for r in sick if r["true_where"]]
    diverging = [r for r in sick if r.get("diverge_step") is not None]
    healthy = [r for r in mine if r["true_cause"] == "healthy"]
    leads = [r["lead"] for r in diverging if r.get("lead") is not None]
    roomy = [r for r in diverging if (r.get("room") or 0) >= 50]  # a warning has 50 steps
    return {
        "right cause first": (sum(r.get("first", False) for r in sick), len(sick)),
        "right cause anywhere": (sum(r.get("anywhere", False) for r in sick), len(sick)),
        "location named": (sum(r.get("located", False) for r in placed), len(placed)),
        "warned before divergence": (len(leads), len(diverging)),
        "  >= 50 ahead, of those with room": (
            sum((r.get("lead") or 0) >= 50 for r in roomy),
            len(roomy),
        ),
        "  >= 50 ahead, warned at the time": (
            sum((r.get("live_lead") or 0) >= 50 for r in roomy),
            len(roomy),
        ),
        "  median lead (steps)": statistics.median(leads) if leads else None,
        "healthy w/ warning": (sum(r.get("warned", False) for r in healthy), len(healthy)),
        "fault not induced": sum(not r.get("induced", True) for r in mine),
        "monitor raised into loop": sum(bool(r.get("monitor_raised")) for r in mine),
        "errors": sum(r["mode"] == mode and r.get("error") is not None for r in rows),
    }


def _cell(v) -> str:
    if isinstance(v, tuple):
        n, d = v
        return f"{n}/{d} ({100 * n / d:.0f}%)" if d else "-"
    if v is None:
        return "-"
    return f"{v:g}" if isinstance(v, float) else str(v)


def print_tables(rows: list[dict], modes: list[str]) -> dict:
    summary = {m: summarise(rows, m) for m in modes}
    keys = list(next(iter(summary.values())))
    width = max(map(len, keys)) + 2
    print("\n" + "metric".ljust(width) + "".join(m.ljust(18) for m in modes))
    for k in keys:
        print(k.ljust(width) + "".join(_cell(summary[m][k]).ljust(18) for m in modes))
    print()
    head = f"{'scenario':34} {'family':9} {'optimizer':11} {'true cause':28}"
    for m in modes:
        head += f" {m + ': top':28} {'hit':4} {'loc':4} {'lead':5}"
    print(head)
    by = {(r["scenario"], r["mode"]): r for r in rows}
    for name in dict.fromkeys(r["scenario"] for r in rows):
        first = next(by[(name, m)] for m in modes if (name, m) in by)
        line = f"{name:34} {first['family']:9} {first['optimizer']:11} {first['true_cause']:28}"
        for m in modes:
            r = by.get((name, m))
            if r is None:
                line += " " * 44
                continue
            if r.get("error"):
                line += f" {'ERROR':28} {'':4} {'':4} {'':5}"
                continue
            if r["true_cause"] == "healthy":
                hit = "ok" if not r.get("warned") else "FA"
            else:
                hit = "1st" if r.get("first") else ("any" if r.get("anywhere") else "no")
            if not r.get("induced", True):
                hit += "!"  # the scenario's own check says its fault did not happen
            loc = "-" if not r["true_where"] else ("y" if r.get("located") else "n")
            lead = r.get("lead")
            lead = "-" if r.get("diverge_step") is None else ("no" if lead is None else lead)
            line += f" {r.get('top', '?')[:28]:28} {hit:4} {loc:4} {str(lead):5}"
        print(line)
    errors = [r for r in rows if r.get("error")]
    for r in errors:
        print(f"\nERROR in {r['scenario']} ({r['mode']}):\n{r['error']}")
    for r in rows:
        if r.get("monitor_raised"):
            print(f"mon.step raised in {r['scenario']} ({r['mode']}): {r['monitor_raised']}")
        if not r.get("induced", True):
            failed = [k for k, v in r["checks"].items() if not v]
            print(f"fault not induced in {r['scenario']} ({r['mode']}): {failed}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="scenario names (or substrings) to run")
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--skip-heldout", action="store_true", help="leave the held-out ones out")
    parser.add_argument("--heldout-only", action="store_true")
    parser.add_argument(
        "--file", help="only the scenarios of one case file, e.g. cases_heldout (bench/scenarios/)"
    )
    parser.add_argument("--json", default="runs/diagnosis_accuracy/results.json")
    parser.add_argument("--keep", help="keep the run directories here (default: a temp dir)")
    parser.add_argument("--verbose", action="store_true", help="print each run's diagnoses")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--from-json", help="reprint the tables of a saved results JSON")
    parser.add_argument(
        "--rejudge",
        metavar="KEEP",
        help="with --from-json: diagnose again the runs kept in KEEP (an earlier --keep) with "
        "the diagnosis as it is now, without training them again (a change to the rules only)",
    )
    args = parser.parse_args(argv)
    if args.rejudge and not args.from_json:
        parser.error("--rejudge needs --from-json: the rows of the runs it kept")
    if args.from_json and args.rejudge:
        return rejudge(Path(args.from_json), Path(args.rejudge), args.modes, Path(args.json))
    if args.from_json:
        rows = json.loads(Path(args.from_json).read_text())["rows"]
        modes = [m for m in args.modes if any(r["mode"] == m for r in rows)]
        if args.skip_heldout:
            rows = [r for r in rows if not r.get("heldout")]
        print_tables(rows, modes)
        return 0

    from scenarios import SCENARIOS

    names = list(SCENARIOS)
    if args.only:
        names = [n for n in names if any(o == n for o in args.only)] or [
            n for n in names if any(o in n for o in args.only)
        ]
        if not names:
            parser.error(f"no scenario matches {args.only}")
    if args.skip_heldout:
        names = [n for n in names if not SCENARIOS[n].heldout]
    if args.heldout_only:
        names = [n for n in names if SCENARIOS[n].heldout]
    if args.file:
        names = [n for n in names if SCENARIOS[n].run.__module__.rsplit(".", 1)[-1] == args.file]
        if not names:
            parser.error(f"no scenario is defined in bench/scenarios/{args.file}.py")
    if args.list:
        for n in names:
            s = SCENARIOS[n]
            flag = " [held out]" if s.heldout else ""
            print(f"{n:34} {s.family:9} {s.optimizer:11} {s.cause}{flag}")
        return 0

    root = args.keep or tempfile.mkdtemp(prefix="sg-diag-")
    if args.keep:
        for m in args.modes:
            for n in names:
                shutil.rmtree(Path(root) / m / n, ignore_errors=True)
    jobs = [(n, m, root) for n in names for m in args.modes]
    t0 = time.perf_counter()
    rows: list[dict] = []
    if args.jobs > 1 and len(jobs) > 1:
        with mp.get_context("spawn").Pool(args.jobs, maxtasksperchild=4) as pool:
            for row in pool.imap_unordered(_run_star, jobs):
                rows.append(row)
                _progress(row, args.verbose)
    else:
        for job in jobs:
            rows.append(run_one(*job))
            _progress(rows[-1], args.verbose)
    order = {n: i for i, n in enumerate(names)}
    rows.sort(key=lambda r: (order[r["scenario"]], args.modes.index(r["mode"])))
    summary = print_tables(rows, args.modes)
    print(f"\n{len(jobs)} runs in {time.perf_counter() - t0:.0f} s with {args.jobs} process(es)")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1, default=str))
    print(f"results: {out}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def rejudge(saved: Path, keep: Path, modes: list[str], out: Path) -> int:
    """The rows of ``saved`` judged again from the runs kept under ``keep``: each run's own
    facts (checks, divergence) as they were, its diagnosis as the rules are now. A row whose
    run was not kept, or whose scenario is gone, is left as it was."""
    from scenarios import SCENARIOS

    rows = json.loads(saved.read_text())["rows"]
    again = 0
    for i, row in enumerate(rows):
        run_dir = keep / row["mode"] / row["scenario"]
        sc = SCENARIOS.get(row["scenario"])
        if sc is None or not run_dir.is_dir() or row.get("error") or "diagnoses" not in row:
            continue
        rows[i] = judged(dict(row), sc, run_dir)
        again += 1
    modes = [m for m in modes if any(r["mode"] == m for r in rows)]
    summary = print_tables(rows, modes)
    print(f"\n{again} of {len(rows)} rows judged again from the runs kept in {keep}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1, default=str))
    print(f"results: {out}")
    return 0


def _progress(row: dict, verbose: bool) -> None:
    status = "ERROR" if row.get("error") else row.get("top", "?")
    print(
        f"  {row['scenario']:34} {row['mode']:8} {row['seconds']:6.1f}s {row['steps']:4d} steps "
        f"diverge={row.get('diverge_step')} -> {status}",
        file=sys.stderr,
        flush=True,
    )
    if verbose:
        for d in row.get("diagnoses", []):
            print(f"      {d}", file=sys.stderr)
        print(f"      finding kinds: {row.get('finding_kinds')}", file=sys.stderr)
        print(f"      checks: {row.get('checks')}", file=sys.stderr)
        print(f"      loss: {row.get('loss_trace')}", file=sys.stderr)
        if row.get("error"):
            print(row["error"], file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
