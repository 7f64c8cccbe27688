"""Run shapes the twelfth wave's runs showed, each a trigger and a control: a steady climb of
the output log-partition read on its cadence, with the extra readings the monitor takes after
a finding in between; units killed by a burst of the learning rate that was over at once, read
as dead or as dying; a layer written as a module with a child router, whose ReLU is called in
its parent's forward; a warm-up that never stopped; attention saturated below the logit cap; an explosion whose first spike was one tensor's."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import diagnose_stored
from torch import nn

import steadygrad
from steadygrad.core import Record
from steadygrad.diagnose.detectors.base import Cadence
from steadygrad.diagnose.detectors.transformer import (
    AttentionLogitGrowth,
    OutputLogitDivergence,
)


def _climb(closer_looks: bool) -> list[int]:
    """log Z read every 25 steps, rising one nat a reading from log(10) while the loss stays
    where it began (unearned); with ``closer_looks``, three extra readings after step 100, the
    first a little lower (another batch): the steps it warned at."""
    detector, found = OutputLogitDivergence(), []
    readings = [(25 * k, math.log(10) + k) for k in range(12)]
    if closer_looks:
        at_100 = readings[4][1]
        readings += [(101, at_100 - 0.2), (102, at_100 - 0.1), (103, at_100 + 0.05)]
    for step, lse in sorted(readings):
        record = Record(step, {"logit_lse_mean": lse, "loss": math.log(10)})
        found += [f.step for f in detector.update(record)]
    return found


@pytest.mark.parametrize("closer_looks", [False, True])
def test_a_steady_climb_of_log_z_is_judged_on_its_cadence(closer_looks):
    # Trigger: closer looks after a finding read the next steps' batches, whose scatter is not
    # the drift; one a little lower used to restart the count of rises, and the warning came
    # two readings later. Control: the same climb with no closer looks: the warning comes at
    # the sixth rise on the cadence, five nats up, in both
    assert _climb(closer_looks)[:1] == [150]


def test_the_cadence_is_the_first_gap_and_extra_readings_fall_inside_half_of_it():
    cadence = Cadence()
    steps = (0, 25, 26, 27, 28, 50, 51, 75)
    assert [cadence.on(s) for s in steps] == [True, True, False, False, False, True, False, True]


def _rate_burst(tmp_path, burst: int):
    """A ReLU MLP learning a teacher under RMSprop at 1e-3; from step 80 its rate is 30x for
    ``burst`` steps, then back: the step kills most of the second layer's units."""
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 2))
    model = nn.Sequential(
        nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2)
    )
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    mon = steadygrad.Monitor(model, opt, tmp_path / str(burst), progress=False)
    data = torch.Generator().manual_seed(1)
    for step in range(220):
        opt.param_groups[0]["lr"] = 3e-2 if 80 <= step < 80 + burst else 1e-3
        x = torch.randn(64, 8, generator=data)
        with torch.no_grad():
            y = teacher(x)
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.step(loss)
    mon.close()
    return steadygrad.diagnose(tmp_path / str(burst))


@pytest.mark.parametrize("burst", [3, 1000])
def test_units_killed_by_a_burst_of_the_rate_are_the_harm_that_stayed(tmp_path, burst):
    # Trigger: three steps at 30x the rate, then back: the burst is over, the units it killed
    # stay dead (the dead-unit signal reads 84% of the layer to the end): what to fix is the
    # dead layer, dated to the burst. Control: the rate raised and kept there: the step size
    # is the cause, and the units it killed come after it
    report = _rate_burst(tmp_path, burst)
    causes = report.causes()
    plasticity = next(d for d in report.diagnoses if d.cause == "loss_of_plasticity")
    assert plasticity.where[0] == "2"
    if burst < 30:
        assert report.top is plasticity and plasticity.first_step == 80
        assert "killed in a burst of the learning rate (30x at step 80, back at step 83)" in (
            plasticity.summary
        )
        # the burst was over in three steps: no rate the run trains at is above the limit
        assert "sharpness_above_limit" not in causes
    else:
        assert report.top.cause == "sharpness_above_limit"
        assert "burst" not in plasticity.summary


@pytest.mark.parametrize("stayed", [True, False])
def test_units_left_dying_by_a_burst_stayed_so(tmp_path, stayed):
    # A CondConv net's ReLUs, called in its parent's forward, pass 46% of its outputs before a
    # 40x burst of the rate at step 120 (back at 125) and 4% after it, with no unit dead on
    # every example: the units were found dying at 124. Trigger: they pass 4% to the end: the
    # harm that stayed. Control: they pass 45% again by the end: they came back, and the burst
    # (the jolt it made, a glitch of the schedule) is what happened
    rows = []
    for t in range(250):
        row = {"loss": 0.05 if t < 121 else 2.3, "lr/0": 0.8 if 120 <= t < 125 else 0.02}
        if t % 12 == 0 or 121 <= t <= 124:
            late = 0.04 if stayed or t < 200 else 0.45
            row["relu_active/features"] = 0.46 if t < 121 else late
            row["dead_units/features"] = 0.0
        rows.append(row)
    findings = [
        ("loss_spike", 121, None, {"ratio": 140.0}, "warning"),
        ("loss_divergence", 127, None, {"ratio": 66.0}, "critical"),
        ("loss_of_plasticity", 124, "features", {"reason": "dying_units"}, "warning"),
    ]
    report = diagnose_stored(tmp_path, str(stayed), rows, findings)
    plasticity = next(d for d in report.diagnoses if d.cause == "loss_of_plasticity")
    if stayed:
        assert report.top is plasticity and plasticity.first_step == 120
        assert "(40x at step 120, back at step 125)" in plasticity.summary
    else:
        assert report.top.cause == "loss_spike"
        assert "raised 4x or more at a stroke at step 120" in report.top.summary
        assert plasticity.first_step == 124


class _RoutedConv(nn.Module):
    """A layer that computes its own output around a child router (as CondConv does): not a
    leaf module, and its output is no leaf's."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) / 3.0)
        self.bias = nn.Parameter(torch.zeros(cout))
        self.route = nn.Linear(cin, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.route(x.mean((2, 3))))[:, :, None, None]
        return gate * F.conv2d(x, self.weight, self.bias, padding=1)


class _RoutedNet(nn.Module):
    def __init__(self, routed: bool) -> None:
        super().__init__()
        self.cond = _RoutedConv(1, 8) if routed else nn.Conv2d(1, 8, 3, padding=1)
        self.head = nn.Linear(8 * 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.cond(x)).flatten(1))


@pytest.mark.parametrize("routed", [True, False])
def test_dead_units_are_credited_to_a_layer_with_a_child_router(tmp_path, routed):
    # Trigger: the layer's own module has a child (its router), so it is no leaf and its
    # output no leaf's: its units were credited to the model's root, over the width of the
    # last dimension. Control: a plain nn.Conv2d, a leaf, as before. In both, 3 of its 8
    # channels are dead (a bias of -100) and are counted per channel, as by hand
    torch.manual_seed(0)
    model = _RoutedNet(routed)
    with torch.no_grad():
        model.cond.bias[:3] = -100.0
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    mon = steadygrad.Monitor(model, opt, tmp_path / "r", progress=False)
    x, y = torch.randn(16, 1, 4, 4), torch.randint(0, 3, (16,))
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    mon.step(loss)
    mon.close()
    run = steadygrad.load(tmp_path / "r")
    with torch.no_grad():
        by_hand = float(((F.relu(model.cond(x)) > 0).sum((0, 2, 3)) == 0).float().mean())
    assert by_hand == 3 / 8
    assert [n for n in run.names() if n.startswith("dead_units/")] == ["dead_units/cond"]
    assert run.series("dead_units/cond")[1][0] == pytest.approx(by_hand)


@pytest.mark.parametrize("capped", [False, True])
def test_a_warm_up_that_never_stopped_rises_into_the_break(tmp_path, capped):
    # A Hamiltonian net's linear warm-up with no cap: the rate rises 0.0025 a step for good,
    # and the run breaks at step 322, where the last 100 steps raised it only 1.45x (a ramp
    # rises less and less over a window) but every step was one the run had never taken.
    # Trigger: the rate still rising into the break: the step size, from the ramp's start.
    # Control: the same warm-up capped at step 100: a rate trained at for 220 steps did not
    # break the run; the gradients grew first
    rows = []
    for t in range(360):
        lr = 0.0025 * (min(t, 100) if capped else t)
        loss = 0.003 if t < 322 else 0.003 * 1.5 ** (t - 321)
        rows.append({"loss": loss, "lr/0": lr, "grad_norm": 0.02 * 1.03 ** max(t - 141, 0)})
    findings = [
        ("loss_divergence", 322, None, {"ratio": 59.0}, "warning"),
        ("loss_divergence", 330, None, {"ratio": 356.0}, "critical"),
        ("gradient_growth", 332, "h.4.weight", {"started_at_step": 141}, "warning"),
    ]
    report = diagnose_stored(tmp_path, str(capped), rows, findings)
    if capped:
        assert report.top.cause == "exploding_gradients"
        assert "sharpness_above_limit" not in report.causes()
    else:
        assert report.top.cause == "sharpness_above_limit" and report.top.first_step == 0
        assert "rising since step 0" in report.top.summary


# (step, share of rows one-hot, largest logit) of a DeepSeek-V3 layer whose softmax scale was
# ported as sqrt(d) instead of 1/sqrt(d), read every 25 steps: 16x too large, the logits grow
# to 85 and most rows go one-hot, below the cap of 100
DEEPSEEK = [(0, 0.0, 1), (25, 0.0, 10), (50, 0.06, 27), (75, 0.30, 52), (100, 0.44, 62),
            (125, 0.50, 68), (150, 0.54, 75), (175, 0.57, 79), (200, 0.57, 85)]  # fmt: skip


@pytest.mark.parametrize("logits", [1.0, 0.33])
def test_attention_one_hot_at_large_logits_is_entropy_collapse(logits):
    # Trigger: most rows one-hot while the largest logit stands at 68-79, at two readings on
    # the cadence: a warning at the second, with the share in its evidence. Control: the same
    # shares at a third of the logits (22-28, under three times the gap of 8-10 a one-hot row
    # over a few dozen keys needs: what a learnt alignment may hold): nothing
    detector, found = AttentionLogitGrowth(), []
    for step, share, largest in DEEPSEEK:
        values = {"attn_logit_max/layers.0.attn": largest * logits}
        values["attn_saturated/layers.0.attn"] = share
        found += detector.update(Record(step, values))
    if logits == 1.0:
        assert [(f.step, f.where) for f in found] == [(150, "layers.0.attn")]
        assert found[0].evidence["attn_saturated"] == pytest.approx(0.54)
    else:
        assert found == []


@pytest.mark.parametrize("compounded", [True, False])
def test_an_explosion_may_start_with_one_tensors_spike(tmp_path, compounded):
    # A recurrent conv net with a recurrent gain above one and no clipping: the gradient norm
    # doubles every two steps from step 12, the head's gradient spikes at step 21, the whole
    # gradient (whose baseline already holds the climb) only at 22, and the loss is NaN at 23.
    # Trigger: the loss rose at every step from the tensor's spike into the NaN: the
    # explosion began there. Control: the loss came down the step after the spike (the run
    # absorbed it) before a NaN from elsewhere: no explosion
    grads = [6.5, 11.9, 13.3, 16.5, 18.2, 21.6, 34.8, 18.9, 82.7, 1.5e3, 7e13]
    losses = [1.4, 1.4, 1.55, 1.8, 1.67, 1.55, 3.0, 2.3, 4.9, 70.0, 8.7e13 if compounded else 3.0]
    rows = [{"loss": 2.0, "grad_norm": 8.0} for _ in range(12)]
    rows += [{"loss": lo, "grad_norm": g} for lo, g in zip(losses, grads, strict=True)]
    rows += [{"loss": float("nan"), "grad_norm": float("nan")} for _ in range(10)]
    findings = [
        ("gradient_spike", 21, "head.weight", {"spike_factor": 900.0}, "warning"),
        ("gradient_spike", 22, "rcl.rec.weight", {"spike_factor": 1e20}, "critical"),
        ("grad_norm_spike", 22, None, {"ratio": 4e12}, "warning"),
        ("nonfinite", 23, "rcl.ff", {}, "critical"),
    ]
    report = diagnose_stored(tmp_path, str(compounded), rows, findings)
    exploding = [d for d in report.diagnoses if d.cause == "exploding_gradients"]
    if compounded:
        assert report.top is exploding[0] and exploding[0].first_step == 21
        assert exploding[0].where[0] == "head.weight"
    else:
        assert exploding == []
