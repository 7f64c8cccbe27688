"""Small shared pieces for the tests: a tiny model and a training loop that records a run."""

from __future__ import annotations

import os
import tempfile
import traceback
from pathlib import Path

import torch
from torch import nn

import steadygrad


def tiny_mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
    )


def regression_batch(seed: int = 0, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randn(n, 3, generator=g)


def train(model, optimizer, mon, steps, batch_fn=regression_batch, before_step=None):
    """A plain loop: forward, backward, optimizer.step(), mon.step(loss), zero_grad."""
    records = []
    for i in range(steps):
        x, y = batch_fn(i)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        if before_step is not None:
            before_step(i)
        optimizer.step()
        records.append(mon.step(loss))
        optimizer.zero_grad(set_to_none=True)
    return records


def no_hooks_left(model: nn.Module, optimizer: torch.optim.Optimizer) -> bool:
    for m in model.modules():
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks:
            return False
    for p in model.parameters():
        if getattr(p, "_post_accumulate_grad_hooks", None):
            return False
    return not (optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks)


NOBODY = 65534  # the unprivileged user and group of Debian-like systems


def as_unprivileged_user(fn) -> str:
    """Run ``fn()`` in a forked child that is not root (root can write anything, so a test of
    what happens where one cannot write must drop the privilege). Returns what ``fn`` returns (a
    str); an exception in the child is raised here as an AssertionError with its traceback."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only modules imported before the fork are used
        code = 0
        try:
            os.close(read)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            out = "ok:" + str(fn())
        except BaseException:
            out, code = "error:" + traceback.format_exc(), 1
        os.write(write, out.encode())
        os._exit(code)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    out = b"".join(chunks).decode()
    if not out.startswith("ok:"):
        raise AssertionError(f"in the unprivileged child:\n{out}")
    return out[3:]


def shared_temp_dir() -> Path:
    """A fresh directory every user can enter (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="steadygrad-"))
    os.chmod(path, 0o755)
    return path


def diagnose_stored(tmp_path, name, rows, findings, config=None):
    """Store ``rows`` (one dict of scalars per step) and ``findings`` (tuples of kind, step,
    where, evidence, severity) as a run with ``config``, and diagnose it: the rules on a run
    shape written by hand."""
    from steadygrad.core import Finding
    from steadygrad.store import RunStore

    store = RunStore(tmp_path / name, config=config)
    for step, values in enumerate(rows):
        store.add_scalars(step, values)
    store.add_findings(Finding(k, s, w, ev, sev) for k, s, w, ev, sev in findings)
    store.close()
    return steadygrad.diagnose(tmp_path / name)


__all__ = [
    "NOBODY",
    "as_unprivileged_user",
    "diagnose_stored",
    "fitted",
    "no_hooks_left",
    "on_bench_path",
    "regression_batch",
    "shape_or_skip",
    "shared_temp_dir",
    "steadygrad",
    "tiny_mlp",
    "train",
]


def induced_or_skip(ctx) -> None:
    """Skip a test built on a scenario whose fault did not happen on this machine: a few sit
    at a floating-point edge (an unclipped recurrence that overflows on one CPU's kernels and
    not on another's), and a judgement of a fault that did not happen tests nothing."""
    import pytest

    failed = [what for what, held in ctx.checks.items() if not held]
    if not ctx.checks or failed:
        pytest.skip(f"the scenario's fault did not happen with this machine's numerics: {failed}")


def shape_or_skip(holds: bool, shape: str) -> None:
    """Skip a test about a run shape its scenario did not take on this machine: a Hugging Face
    model's attention logits follow the CPU's kernels (one machine's level held within 1.3x,
    another's crept 1.35x), and a verdict on a shape the run did not have tests nothing."""
    import pytest

    if not holds:
        pytest.skip(f"on this machine's numerics the run did not take the shape: {shape}")


def on_bench_path() -> None:
    """Make ``bench/`` importable: its scenarios' models, data and training loop."""
    import sys

    bench = str(Path(__file__).resolve().parents[1] / "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)


def fitted(tmp_path: Path, model, optimizer, batches, steps: int, **fit_kwargs):
    """``model`` trained ``steps`` steps by the bench's plain loop (``scenarios.common.fit``)
    with the README's one-line attach: its context (``losses``) and its report. A scenario's
    model run another way (a control at a standard init)."""
    on_bench_path()
    from scenarios.common import Context, fit

    ctx = Context("default", tmp_path / "fitted")
    fit(ctx, model, optimizer, batches, steps, **fit_kwargs)
    ctx.monitor.close()
    return ctx, steadygrad.diagnose(tmp_path / "fitted")


def held_out_run(tmp_path: Path, name: str):
    """Run one of the bench's scenarios with the README's one-line attach; returns its context
    (``checks``: whether the fault took effect, by the scenario's own test) and the report."""
    on_bench_path()
    from scenarios import SCENARIOS
    from scenarios.common import Context

    ctx = Context("default", tmp_path / name)
    SCENARIOS[name].run(ctx)
    ctx.monitor.close()
    return ctx, steadygrad.diagnose(tmp_path / name)


def induced_report(tmp_path: Path, name: str):
    """A held-out scenario's report with the one-line attach, skipped where its fault did not
    take (see :func:`induced_or_skip`)."""
    ctx, report = held_out_run(tmp_path, name)
    induced_or_skip(ctx)
    return report
