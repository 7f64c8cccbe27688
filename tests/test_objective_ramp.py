"""An objective that changes gradually, said by the loop: ``mon.objective_changed(why, over=N)``.

A noise curriculum (a denoising autoencoder on digits whose input noise ramps from 0.1 to 1.5
over steps 100-250) makes the loss climb by design; said, the climb is told at info and the
detectors start again where the ramp ends, while a blow-up is warned whatever the ramp.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import steadygrad
from steadygrad.core import Finding, Record, Severity
from steadygrad.core.metrics import OBJECTIVE_RAMP
from steadygrad.data.digits import load_digits
from steadygrad.diagnose.detectors import default_detectors
from steadygrad.diagnose.detectors.training import LOSS_SPIKE
from steadygrad.diagnose.detectors.trends import GRADIENT_GROWTH, LOSS_DIVERGENCE, WRECKED_WEIGHTS
from steadygrad.monitor.tasks import TaskRestarts

RAMP_FROM, RAMP_OVER = 100, 150


def _noise_curriculum(run_dir, said: bool, broken_at: int | None = None, steps: int = 350):
    """The run's findings and its Monitor, closed. ``broken_at``: Adam's rate raised 1500x."""
    torch.manual_seed(0)
    x_train = load_digits()[0]
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 64))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    mon = steadygrad.Monitor(model, opt, run_dir, progress=False)
    draw = torch.Generator().manual_seed(0)
    losses = []
    for step in range(steps):
        if step == RAMP_FROM and said:
            mon.objective_changed("noise curriculum", over=RAMP_OVER)
        if step == broken_at:
            opt.param_groups[0]["lr"] = 3.0
        noise = 0.1 + 1.4 * min(max((step - RAMP_FROM) / RAMP_OVER, 0.0), 1.0)
        x = x_train[torch.randint(0, len(x_train), (64,), generator=draw)]
        loss = F.mse_loss(model(x + noise * torch.randn(x.shape, generator=draw)), x)
        loss.backward()
        opt.step()
        mon.step(loss)
        opt.zero_grad()
        losses.append(float(loss))
    mon.close()
    return mon, losses


def _warned(mon) -> list[Finding]:
    return [f for f in mon.findings if f.severity != "info"]


@pytest.mark.parametrize("said", [False, True])
def test_a_ramp_the_loop_said_is_a_climb_by_design(tmp_path, said):
    mon, losses = _noise_curriculum(tmp_path / str(said), said)
    # the curriculum really climbs: the last 50 losses' median over 1.5x that of steps 100-150
    before = torch.tensor(losses[RAMP_FROM : RAMP_FROM + 50]).median()
    assert torch.tensor(losses[-50:]).median() > 1.5 * before
    climbs = [f for f in mon.findings if f.kind == LOSS_DIVERGENCE]
    if not said:  # unsaid, a slow climb like any other: warned, within the ramp
        assert [f.kind for f in _warned(mon)] == [LOSS_DIVERGENCE]
        assert RAMP_FROM < climbs[0].step < RAMP_FROM + RAMP_OVER
        return
    assert _warned(mon) == []
    assert [(f.severity, f.evidence[OBJECTIVE_RAMP]) for f in climbs] == [
        ("info", "noise curriculum")
    ]
    top = steadygrad.diagnose(steadygrad.load(tmp_path / "True")).diagnoses[0]
    assert (top.cause, top.severity) == ("loss_divergence", "info")
    assert "ramping then (noise curriculum): a climb by design" in top.summary


@pytest.mark.parametrize("broken_at", [200, 300])
def test_a_blow_up_is_warned_within_the_ramp_and_after_it(tmp_path, broken_at):
    # Control: the rate raised 1500x within the ramp (step 200) or after it (300): the loss
    # blows up at once, a critical divergence either way (after the ramp the detectors have
    # started again from the new objective's level)
    mon, losses = _noise_curriculum(tmp_path, said=True, broken_at=broken_at)
    assert max(losses[broken_at:]) > 1000 * losses[broken_at - 1]
    critical = [f for f in _warned(mon) if f.kind == LOSS_DIVERGENCE]
    assert [(f.step, f.severity) for f in critical] == [(broken_at + 1, "critical")]
    assert OBJECTIVE_RAMP not in critical[0].evidence


def test_the_ramp_is_recorded_and_a_bad_length_refused_by_name(tmp_path):
    _noise_curriculum(tmp_path / "run", said=True, steps=RAMP_FROM + 1)
    run = steadygrad.load(tmp_path / "run")
    assert [(a.step, a.kind, a.detail) for a in run.actions()] == [
        (RAMP_FROM, "objective_changed", {"why": "noise curriculum", "over": RAMP_OVER})
    ]
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with steadygrad.Monitor(model, opt, tmp_path / "bad", progress=False) as mon:
        with pytest.raises(ValueError, match="over must be an int >= 0, got -1"):
            mon.objective_changed("warm-up", over=-1)
        for wrong in (1.5, True, "10"):
            with pytest.raises(TypeError, match="over must be an int >= 0"):
                mon.objective_changed("warm-up", over=wrong)


def test_soften_tells_levels_at_info_within_the_ramp_only():
    # By hand: a ramp said at step 10 over 10 steps covers records 10-19. Within it, a loss
    # above its best and a grown gradient are told at info; a blow-up (one loss far out,
    # evidence "loss"; a gradient that wrecked the weights), a loss spike and anything at step
    # 20 (the detectors start again there) are left as they were.
    restarts = TaskRestarts(default_detectors())
    restarts.restart_at(10, over=10, why="aux ramp")
    climb = Finding(LOSS_DIVERGENCE, 15, None, {"loss_median": 2.0}, Severity.WARNING)
    grown = Finding(GRADIENT_GROWTH, 15, "fc.weight", {"ratio": 40.0}, Severity.CRITICAL)
    blow_up = Finding(LOSS_DIVERGENCE, 15, None, {"loss": 1e6}, Severity.CRITICAL)
    spike = Finding(LOSS_SPIKE, 15, None, {"z": 9.0}, Severity.WARNING)
    wrecked = Finding(GRADIENT_GROWTH, 15, "fc.weight", {WRECKED_WEIGHTS: True}, Severity.CRITICAL)
    softened = restarts.soften([climb, grown, blow_up, spike, wrecked], 15)
    assert [(f.kind, f.severity, f.evidence.get(OBJECTIVE_RAMP)) for f in softened] == [
        (LOSS_DIVERGENCE, "info", "aux ramp"),
        (GRADIENT_GROWTH, "info", "aux ramp"),
        (LOSS_DIVERGENCE, "critical", None),
        (LOSS_SPIKE, "warning", None),
        (GRADIENT_GROWTH, "critical", None),
    ]
    assert restarts.soften([climb], 9) == [climb]
    detectors = default_detectors()
    assert restarts.follow(detectors, Record(20, {"loss": 1.0}))
    assert restarts.soften([climb], 20) == [climb]
