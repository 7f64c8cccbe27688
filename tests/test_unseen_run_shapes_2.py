"""Run shapes the thirteenth and fourteenth held-out sets showed (each a trigger and a control):
tensors frozen by the code's own ``requires_grad=False``, a per-coordinate optimizer's giant first
gradient, many tensors of dead code, and attention that a healthy model learns one-hot."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import steadygrad
from steadygrad.core import Record
from steadygrad.core.metrics import FROZEN_AT_ATTACH, OPTIMIZER_FAMILY
from steadygrad.diagnose.detectors import Detector, GradientGrowth, UpdateRatioOutOfRange


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 8, generator=g), torch.randint(0, 4, (64,), generator=g)


class _Positional(nn.Module):
    """An MLP with a fixed sinusoidal table added to its hidden layer, as Hugging Face's
    PatchTST, Whisper and Marian build theirs: a Parameter with ``requires_grad=False``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(8, 32)
        table = torch.sin(torch.arange(32.0) / 3.0)
        self.table = nn.Parameter(table, requires_grad=False)
        self.out = nn.Linear(32, 4)

    def forward(self, x):
        return self.out(torch.relu(self.inp(x) + self.table))


@pytest.mark.parametrize("frozen", ["at_attach", "mid_run"])
def test_a_tensor_frozen_by_requires_grad_from_the_start_is_said_not_warned(tmp_path, frozen):
    model = _Positional()
    if frozen == "mid_run":
        model.table.requires_grad_(True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)  # holds the table too
    x, y = _data()
    before = model.table.detach().clone()
    with steadygrad.watch(model, opt, tmp_path / frozen, progress=False, update_every=5) as mon:
        for step in range(40):
            if step == 10 and frozen == "mid_run":
                model.table.requires_grad_(False)  # a recipe that froze it by mistake
                model.table.grad = None
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad(set_to_none=True)
    found = [(f.where, f.severity) for f in mon.findings if f.kind == "update_ratio_out_of_range"]
    if frozen == "at_attach":
        assert torch.equal(model.table, before)  # the oracle: it never moved
        assert found == [("table", "info")]
        assert steadygrad.diagnose(tmp_path / frozen).top.severity == "info"
    else:
        assert not torch.equal(model.table, before)  # it trained for 10 steps, then stopped
        assert found == [("table", "warning")]


class _MetaSpy(Detector):
    """Keeps each record's meta."""

    def __init__(self):
        self.metas = []

    def update(self, record):
        self.metas.append(dict(record.meta))
        return []


def test_the_first_record_carries_the_frozen_tensors_and_the_optimizer_family(tmp_path):
    model = _Positional()
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    x, y = _data()
    spy = _MetaSpy()
    with steadygrad.Monitor(model, opt, tmp_path / "meta", detectors=[spy]) as mon:
        for _ in range(3):
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    metas = spy.metas
    assert metas[0][FROZEN_AT_ATTACH] == ["table"] and metas[0][OPTIMIZER_FAMILY] == "adaptive"
    assert all(FROZEN_AT_ATTACH not in m and OPTIMIZER_FAMILY not in m for m in metas[1:])


def test_update_ratio_detector_reads_frozen_at_attach_from_the_meta():
    detector = UpdateRatioOutOfRange(patience=2)
    found = []
    for step in range(4):
        meta = {FROZEN_AT_ATTACH: ["pos.weight"]} if step == 0 else {}
        values = {"update_ratio/pos.weight": 0.0, "update_ratio/fc.weight": 0.0}
        found += detector.update(Record(step, values, meta=meta))
    assert sorted((f.where, f.severity) for f in found) == [
        ("fc.weight", "warning"),
        ("pos.weight", "info"),
    ]


@pytest.mark.parametrize("family", ["adam", "adaptive", "sgd"])
def test_a_giant_first_gradient_wrecks_weights_only_through_a_step_that_scales_with_it(family):
    # The first record: a gradient 150x the next, an update as large as the weights. Under SGD
    # the gradient made that update; under Adam or Adagrad the first step is about the learning
    # rate per coordinate whatever the gradient (lr 0.02 on weights of scale 0.01).
    detector = GradientGrowth()
    found = []
    for step in range(12):
        grad = 300.0 if step == 0 else 2.0
        values = {
            "grad_norm": grad,
            "grad_norm/w": grad,
            "param_norm": 1.0,
            "param_norm/w": 1.0,
            "update_ratio/w": 2.0 if step == 0 else 0.01,
            "loss": 2.3,  # at chance for a while, as any slow start
        }
        meta = {OPTIMIZER_FAMILY: family} if step == 0 else {}
        found += detector.update(Record(step, values, meta=meta))
    if family == "sgd":
        assert [(f.step, f.severity) for f in found] == [(0, "critical")]
    else:
        assert found == []


class _WideBranch(nn.Module):
    """A trunk and twenty side layers whose outputs go nowhere: forty tensors of dead code."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Linear(8, 16)
        self.side = nn.ModuleList(nn.Linear(16, 16) for _ in range(20))
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.trunk(x))
        for layer in self.side:
            layer(h)  # computed, never used
        return self.head(h)


def test_many_tensors_of_dead_code_are_found_with_one_forward(tmp_path):
    model = _WideBranch()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = _data()
    with steadygrad.watch(model, opt, tmp_path / "wide", progress=False, update_every=5) as mon:
        for _ in range(30):
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad(set_to_none=True)
    unused = {f.where for f in mon.findings if f.evidence.get("direction") == "unused"}
    side = {n for n, _ in model.side.named_parameters(prefix="side")}
    assert len(side) == 40 and unused == side  # more than the 16 tested one by one
    assert not [f for f in mon.findings if f.severity != "info"]
