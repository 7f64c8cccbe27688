"""Steps finished one call late (``Monitor(defer=True)``, the default on a GPU).

Deferred, a step's values travel to the host behind the next step's work and are judged at the
next ``mon.step`` call. Oracle: the same run finished at once, in the same process: a healthy
run stores the same values at every step, and a run that makes a NaN gets the same diagnosis
and the same producer. On the CPU the copy is synchronous; the order of the calls (the next
step's begin, forward pass and update before this step's finish) is the GPU's.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import steadygrad
from steadygrad.models import TinyGPT
from steadygrad.monitor.monitor import DEFER_ENV, SYNCHRONOUS_AFTER_NONFINITE

STEPS = 30


def _train_gpt(tmp_path, name, defer, steps=STEPS):
    model = TinyGPT(vocab_size=64, n_layer=2, n_head=2, n_embd=32, block_size=16, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    returned = []
    mon = steadygrad.Monitor(
        model,
        opt,
        tmp_path / name,
        progress=False,
        defer=defer,
        activation_every=4,
        update_every=3,
    )
    for _ in range(steps):
        idx = torch.randint(0, 64, (4, 17), generator=gen)
        loss = model.loss(idx[:, :-1], idx[:, 1:])
        loss.backward()
        opt.step()
        record = mon.step(loss)
        returned.append(None if record is None else record.step)
        opt.zero_grad()
    mon.close()
    return steadygrad.load(tmp_path / name), returned


def test_a_deferred_run_stores_what_one_finished_at_once_stores(tmp_path):
    now, returned_now = _train_gpt(tmp_path, "now", defer=False)
    late, returned_late = _train_gpt(tmp_path, "late", defer=True)
    assert returned_now == list(range(STEPS))
    finished = [r for r in returned_late if r is not None]
    assert finished == list(range(STEPS - 1))  # each step once, in order; the last at close
    late_ones = [r for i, r in enumerate(returned_late) if r is not None and r == i - 1]
    assert len(late_ones) >= STEPS - 2  # the first finishes at once (the head is named there)
    names = now.names()
    assert names == late.names()
    assert {"attn_logit_max", "act_rms", "update_ratio"} & {n.split("/")[0] for n in names}
    compared = 0
    for name in names:
        (steps_a, a), (steps_b, b) = now.series(name), late.series(name)
        assert list(steps_a) == list(steps_b), name
        both = [(x, y) for x, y in zip(a, b, strict=True) if name != "step_time"]
        assert all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in both), name
        compared += len(both)
    assert compared > 1000
    assert [f.kind for f in now.findings()] == [f.kind for f in late.findings()]


class LogFeature(nn.Module):
    """log of the first input feature (positive in the data): NaN for one bad sample."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], dim=1)


def _train_nan(tmp_path, name, defer, bad_step=7):
    torch.manual_seed(0)
    model = nn.Sequential(LogFeature(), nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    with steadygrad.watch(
        model, opt, tmp_path / name, progress=False, activation_every=50, defer=defer
    ) as mon:
        for step in range(12):
            x = torch.rand(16, 4, generator=gen) + 0.1
            if step >= bad_step:
                x[3, 0] = -1.0  # a bad sample at every step from here: log of a negative
            loss = nn.functional.cross_entropy(model(x), torch.randint(0, 3, (16,), generator=gen))
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
        assert mon._in_step_until >= bad_step + SYNCHRONOUS_AFTER_NONFINITE
    return steadygrad.load(tmp_path / name)


def test_a_nan_in_a_deferred_run_is_found_at_its_step_and_traced_to_its_producer(tmp_path):
    now = _train_nan(tmp_path, "now", defer=False)
    late = _train_nan(tmp_path, "late", defer=True)
    first_now = next(f for f in now.findings() if f.kind == "nonfinite")
    first_late = next(f for f in late.findings() if f.kind == "nonfinite")
    assert first_now.step == first_late.step == 7
    # at once, the step itself is replayed; deferred, the next steps (finished at once) trace
    # the producer by their hooks: the module that takes the log, by construction
    assert first_now.where == "0"
    origin = [
        f.evidence["forward_origin"]["module"]
        for f in late.findings()
        if f.kind in ("nonfinite", "nonfinite_origin") and "forward_origin" in f.evidence
    ]
    assert origin and set(origin) == {"0"}
    top_now, top_late = steadygrad.diagnose(now).top, steadygrad.diagnose(late).top
    assert top_now.cause == top_late.cause == "nonfinite"
    assert "0" in top_late.where


def test_close_and_the_checkpoint_finish_the_step_left_pending(tmp_path):
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", progress=False, defer=True)
    for _ in range(3):
        model(torch.ones(2, 3)).sum().backward()
        opt.step()
        mon.step(model(torch.ones(2, 3)).sum())
        opt.zero_grad()
    assert mon.last_record.step == 1
    state = mon.state_dict()
    assert state["step"] == 3 and mon.last_record.step == 2
    mon.close()
    assert list(steadygrad.load(tmp_path / "run").series("loss")[0]) == [0, 1, 2]


def test_defer_is_on_by_default_only_on_a_gpu_and_never_with_an_autopilot(tmp_path, monkeypatch):
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def monitor(name, **kw):
        mon = steadygrad.Monitor(model, opt, tmp_path / name, progress=False, **kw)
        mon.close()
        return mon.defer

    monkeypatch.delenv(DEFER_ENV, raising=False)
    assert monitor("cpu") is False
    assert monitor("forced", defer=True) is True
    monkeypatch.setenv(DEFER_ENV, "1")
    assert monitor("env") is True
    assert monitor("pilot", autopilot=steadygrad.Autopilot()) is False
    with pytest.raises(ValueError, match="defer=True and an autopilot"):
        monitor("both", defer=True, autopilot=steadygrad.Autopilot())
    with pytest.raises(TypeError, match="defer must be"):
        monitor("bad", defer="yes")
    monkeypatch.setenv(DEFER_ENV, "maybe")
    with pytest.raises(ValueError, match=DEFER_ENV):
        monitor("bad_env")


def test_with_every_the_step_left_pending_is_finished_by_the_next_call(tmp_path):
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", progress=False, defer=True, every=3)
    returned = []
    for _ in range(8):
        model(torch.ones(2, 3)).sum().backward()
        opt.step()
        record = mon.step(model(torch.ones(2, 3)).sum())
        returned.append(None if record is None else record.step)
        opt.zero_grad()
    mon.close()
    # steps 0, 3 and 6 are recorded; each is finished by the call after it, recorded or not
    assert [r for r in returned if r is not None] == [0, 3, 6]
    assert returned.index(0) in (0, 1) and returned.index(3) == 4 and returned.index(6) == 7
    assert list(steadygrad.load(tmp_path / "run").series("loss")[0]) == [0, 3, 6]
