"""Run shapes the thirteenth to sixteenth held-out sets showed (each a trigger and a control):
tensors frozen by the code's own ``requires_grad=False``, a per-coordinate optimizer's giant first
gradient, many tensors of dead code, a path whose gradient vanishes, and spikes that come with a
divergence already under way."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import steadygrad
from steadygrad.core import Record
from steadygrad.core.metrics import FROZEN_AT_ATTACH, OPTIMIZER_FAMILY
from steadygrad.diagnose.detectors import (
    Detector,
    GradientGrowth,
    LossDivergence,
    UpdateRatioOutOfRange,
)


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 8, generator=g), torch.randint(0, 4, (64,), generator=g)


def _train(attach, model, opt, steps):
    """``steps`` full-batch steps of a 4-class fit under ``attach`` (a Monitor, or ``watch``);
    returns the Monitor."""
    x, y = _data()
    with attach as mon:
        for _ in range(steps):
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad(set_to_none=True)
    return mon


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
    spy = _MetaSpy()
    _train(steadygrad.Monitor(model, opt, tmp_path / "meta", detectors=[spy]), model, opt, 3)
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
    attach = steadygrad.watch(model, opt, tmp_path / "wide", progress=False, update_every=5)
    mon = _train(attach, model, opt, 30)
    unused = {f.where for f in mon.findings if f.evidence.get("direction") == "unused"}
    side = {n for n, _ in model.side.named_parameters(prefix="side")}
    assert len(side) == 40 and unused == side  # more than the 16 tested one by one
    assert not [f for f in mon.findings if f.severity != "info"]


class _Quiet(nn.Module):
    """A trunk, and a side path whose contribution is scaled by 1e-6 (a layer-scale left at its
    tiny initial value): the path's gradient is a millionth of the trunk's."""

    def __init__(self, scale: float):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Linear(8, 16)
        self.quiet = nn.Linear(16, 16)
        self.head = nn.Linear(16, 4)
        self.scale = scale

    def forward(self, x):
        h = torch.relu(self.trunk(x))
        return self.head(h + self.scale * self.quiet(h))


@pytest.mark.parametrize("case", ["vanishing", "lr_zero"])
def test_a_tensor_still_because_its_gradient_vanishes_is_not_frozen(tmp_path, case):
    # the control: an ordinary gradient, and a learning rate of 0 for the path
    model = _Quiet(1e-6 if case == "vanishing" else 1.0)
    quiet = list(model.quiet.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("quiet")]
    lr_quiet = 0.05 if case == "vanishing" else 0.0  # lr 0: frozen by the recipe
    opt = torch.optim.SGD([{"params": rest}, {"params": quiet, "lr": lr_quiet}], lr=0.05)
    attach = steadygrad.watch(model, opt, tmp_path / case, progress=False, update_every=5)
    mon = _train(attach, model, opt, 40)
    found = {(f.where, f.severity, f.evidence["direction"]) for f in mon.findings}
    run = steadygrad.load(tmp_path / case)
    g = run.series("grad_norm/quiet.weight")[1][0] / run.series("param_norm/quiet.weight")[1][0]
    h = run.series("grad_norm/head.weight")[1][0] / run.series("param_norm/head.weight")[1][0]
    if case == "vanishing":
        assert g < 1e-3 * h  # the oracle: the path's gradient is under a thousandth
        assert found == {("quiet.weight", "info", "vanishing")}
    else:
        assert found == {("quiet.weight", "warning", "frozen")}


def _drifting_regression(tmp_path, name, spike_at, drift=True):
    """Adam on a regression whose labels get noisier from step 60 (the loss climbs, and no
    mechanism is behind it), with one batch of inputs 300x too large at ``spike_at``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 1, generator=g)
    with steadygrad.watch(model, opt, tmp_path / name, progress=False) as mon:
        for step in range(260):
            x = torch.randn(32, 8, generator=g)
            noise = 0.02 * (step - 60) if drift and step >= 60 else 0.0  # ever noisier labels
            y = x @ w + noise * torch.randn(32, 1, generator=g)
            if step == spike_at:
                x = 300.0 * x
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    return steadygrad.diagnose(tmp_path / name)


def test_a_spike_in_a_loss_already_climbing_is_part_of_the_divergence(tmp_path):
    report = _drifting_regression(tmp_path, "late", spike_at=200)
    causes = [d.cause for d in report.diagnoses]
    assert report.top.cause == "loss_divergence"
    spike = next(d for d in report.diagnoses if d.cause == "gradient_spike")
    assert "already climbing" in spike.why and spike.confidence == "low"
    assert "adam_second_moment_poisoned" not in causes
    # control: the same batch in a run whose labels stay clean is an event of its own
    clean = _drifting_regression(tmp_path, "clean", spike_at=200, drift=False)
    assert clean.top.cause in ("data_outlier", "adam_second_moment_poisoned", "gradient_spike")
    assert "already climbing" not in clean.top.why


def test_a_loss_below_zero_diverges_only_once_clear_above_where_it_started():
    # A contrastive-divergence loss (energy of data minus energy of negatives): it starts near
    # 0, dips to -0.05 while the model learns, then hovers near 0 again by design.
    rng = torch.Generator().manual_seed(0)
    noise = (0.01 * torch.randn(300, generator=rng)).tolist()
    shape = [0.01 - 0.057 * min(t, 15) / 15 if t < 30 else -0.047 + 0.05 * min(t - 30, 15) / 15
             for t in range(300)]  # fmt: skip
    hovering = [a + b for a, b in zip(shape, noise, strict=True)]
    assert min(hovering) < -0.04 and abs(sum(hovering[-50:]) / 50) < 0.01  # the oracle
    assert run_loss(LossDivergence(), hovering) == []
    # the same start, then a climb far above it (a critic whose loss runs away upwards)
    climbing = hovering[:60] + [v + 0.02 * (t - 60) for t, v in enumerate(hovering) if t >= 60]
    assert run_loss(LossDivergence(), climbing)
    # a loss that stays positive keeps its level as the scale: the same dip and return above 0,
    # from a level of 1, climbs by 5% of it and is no divergence either
    assert run_loss(LossDivergence(), [1.0 + v for v in hovering]) == []


def run_loss(detector, losses):
    return [f for t, x in enumerate(losses) for f in detector.update(Record(t, {"loss": x}))]


def test_probes_without_a_stability_limit_at_their_step_are_left_out(tmp_path):
    # A schedule that runs past its end gives a negative learning rate (the seventeenth set's
    # skip-gram): the sharpness probe then has no 2/lr limit, and the two series differ in
    # length. Diagnosing the run must pair them by step, not by position.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = _data()

    def loss_fn(m, batch):
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    probe = steadygrad.SharpnessProbe(loss_fn, (x, y), every=5)
    with steadygrad.Monitor(model, opt, tmp_path / "neg", signals=[probe]) as mon:
        for step in range(80):
            opt.param_groups[0]["lr"] = 0.5 if step < 40 else -0.5 * (step - 39)
            loss = loss_fn(model, (x, y))
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    run = steadygrad.load(tmp_path / "neg")
    sharp, limit = run.series("sharpness"), run.series("sharpness_limit")
    assert len(sharp[0]) > len(limit[0])  # the oracle: probes after step 40 have no limit
    report = steadygrad.diagnose(tmp_path / "neg")  # raised IndexError before
    assert report.top.cause != "sharpness_above_limit" or report.top.first_step < 40
