"""Run shapes from the twenty-ninth session (held-out set 102's misses).

Each change has a trigger that fails on the code before it and a control that must not move."""

from __future__ import annotations

import pytest
import torch
from helpers import diagnose_stored
from torch import nn

import steadygrad
from steadygrad.core.record import Record
from steadygrad.diagnose.detectors.training import LossSpikeDetector


def _regressor_run(tmp_path, bad_batch: bool) -> tuple[list[float], list]:
    """A linear regressor on targets centred at 30 from a zero initialisation: the first loss
    (~900) falls to its noise level (~0.09) within ten steps of SGD. At step 60 one batch's
    targets are off by 10 (``bad_batch``), or an ordinary batch comes."""
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(8, 1, generator=gen)
    losses = []
    with steadygrad.watch(model, opt, tmp_path / str(bad_batch), progress=False) as mon:
        for step in range(90):
            x = torch.randn(64, 8, generator=gen)
            y = x @ w + 30.0 + 0.3 * torch.randn(64, 1, generator=gen)
            if bad_batch and step == 60:
                y = y + 10.0  # a batch measured from another origin
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(loss)
            losses.append(loss.item())
        findings = list(mon.findings)
    return losses, findings


@pytest.mark.parametrize("bad_batch", [True, False])
def test_a_spike_soon_after_a_steep_first_descent_is_a_spike(tmp_path, bad_batch):
    # Trigger: set 102's DepthPro, whose first loss (30, an untrained regressor) fell to 0.5
    # in a few steps; one batch in millimetres at step 60 made it 7 (15x the level). Counting
    # progress from that first loss, and reading the window's tail over the descent, set the
    # bar above the jump: no loss spike, and the batch went unnamed. Here the first loss is
    # ~10^4 times the level and the bad batch ~10^3 times (under the old bar of 0.75 * half the
    # first loss). Control: the same run with an ordinary batch there is quiet.
    losses, findings = _regressor_run(tmp_path, bad_batch)
    level = sorted(losses[40:60])[10]
    assert losses[0] > 1000 * level  # the steep first descent this is about
    spikes = [f.step for f in findings if f.kind == "loss_spike"]
    if bad_batch:
        assert 100 * level < losses[60] < 0.75 * losses[0] / 2
        assert spikes == [60]
    else:
        assert max(losses[40:]) < 3 * level
        assert spikes == []


@pytest.mark.parametrize("after", [2.5, 2.0])
def test_a_jump_short_of_the_progress_bar_is_a_spike_when_it_knocked_the_run(after):
    # Oracle by hand: a loss that starts at 100, then sits at 2.0 +- 0.1 from step 1 on. At
    # step 70 it jumps to 9.0: 4.5x its median, far above the window's tail, yet short of the
    # progress bar (0.75 * half of 100 - 2.0 = 36.75). The next loss, 2.5, stands above all
    # of the 20 before the jump (at most 2.1): the jump knocked the run, a spike at step 70,
    # found with step 71's record. Control: the next loss back at 2.0 leaves it a hard batch.
    detector = LossSpikeDetector()
    values = [100.0] + [2.0 + 0.1 * ((i * 7) % 5 - 2) / 2 for i in range(69)] + [9.0, after]
    values += [2.0] * 10
    found = {}
    for step, value in enumerate(values):
        for f in detector.update(Record(step, {"loss": value})):
            found[step] = f
    if after == 2.5:
        assert list(found) == [71]
        assert found[71].step == 70
        assert found[71].evidence["knock_band"] == pytest.approx(2.1)
        assert found[71].evidence["ratio"] == pytest.approx(4.5)
    else:
        assert found == {}


def _poisoned_rows(after: str) -> list[dict]:
    """Set 102's conformer duration predictor, by hand: Adam at a constant rate, the loss at 1.0
    until one batch at step 160 (durations in audio samples, its loss 3.7e6, its gradient 6,500x
    the usual); the loss climbs for twenty steps after (to 30), then settles at 3.4. Update
    ratios every 10 steps: 0.01 before, as large while the loss climbs (its gradients grew with
    it), 0.0005 a hundred steps on. The gradients ``after`` the climb: "back" near their usual
    size (4x), "above" it (20x, yet 1/1700 of the spike: a score model's loss scale left on),
    or "kept" of the spike's order (set 102's learned optimiser, whose meta-gradient
    exploded): the second moment then tracks them."""
    rows = []
    for t in range(400):
        loss = 1.0 if t < 160 else 3.7e6 if t == 160 else 30.0 if t <= 180 else 3.4
        norm = 0.8 if t < 160 else 27000.0 if t == 160 else 80.0 if t <= 200 else 3.0
        if after == "above" and t > 200:
            norm = 16.0
        if after == "kept" and t > 160:
            norm = 27000.0 * (10.0 if t % 7 == 0 else 0.5)
        row = {"loss": loss, "grad_norm": norm, "lr/0": 3e-3}
        if t % 10 == 0:
            ratio = 0.01 if t < 260 else 0.0005
            row["update_ratio/head.weight"] = row["update_ratio/body.weight"] = ratio
        rows.append(row)
    return rows


@pytest.mark.parametrize("after", ["back", "above", "kept"])
def test_a_poisoned_moment_is_read_once_the_loss_it_threw_up_came_down(tmp_path, after):
    # Trigger: the damping a poisoned second moment makes is hidden while the loss the spike
    # threw up is high (the gradients grew with it: update ratios as before, 20-70 steps on);
    # a hundred steps on the updates were at 5% of their size. The batch set it off; the harm
    # that stayed is the moment's (set 102's conformer: named an outlier batch alone before).
    # The same with gradients 20x their usual size after (a tiny share of the spike) still is.
    # Control: gradients of the spike's order coming after it are no poisoning (the moment
    # tracks them; the spike stands barely above them): nothing names the moment.
    from steadygrad.core.optimizer import SECOND_MOMENT_DECAY

    findings = [
        ("loss_spike", 160, None, {"loss": 3.7e6, "baseline": 1.0, "ratio": 3.7e6}, "warning"),
        ("grad_norm_spike", 160, None, {"grad_norm": 27000.0, "ratio": 6500.0}, "warning"),
        ("loss_divergence", 166, None, {"ratio": 20.0, "best_level_step": 155}, "warning"),
    ]
    config = {"optimizer": "Adam", "optimizer_family": "adam", SECOND_MOMENT_DECAY: 0.999}
    rows = _poisoned_rows(after)
    report = diagnose_stored(tmp_path, after, rows, findings, config=config)
    causes = report.causes()
    if after == "kept":
        assert "adam_second_moment_poisoned" not in causes
    else:
        assert report.top.cause == "adam_second_moment_poisoned"
        assert report.top.first_step == 160
        assert "100 steps on" in report.top.summary
        assert causes.index("data_outlier") == 1
