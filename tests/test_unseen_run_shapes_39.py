"""Run shapes from the forty-third session.

Each change has a trigger (a held-out scenario it was found on, run here with the one-line
attach: its fault is by construction) and a control that must not move."""

from __future__ import annotations

import pytest
from helpers import diagnose_stored, held_out_run, induced_or_skip


def test_a_layer_that_stood_still_after_its_units_died_is_its_dead_units(tmp_path):
    # Trigger: set 159's heat-loss regressor fed raw kelvin under Adagrad at 0.5 (typed for
    # 0.05): the first step sends the loss 1e6x up and leaves 73% of fc1's units dead from step
    # 4; the gradient it took fills Adagrad's running sum, and fc1's updates read as frozen
    # from step 40. The frozen layer was named first; its units had died before it froze.
    ctx, report = held_out_run(tmp_path, "h159_yurt_felt_raw_adagrad")
    induced_or_skip(ctx)
    assert report.top.cause == "loss_of_plasticity"
    assert "fc1" in report.top.where


@pytest.mark.parametrize("order", ["died_first", "frozen_first"])
def test_a_frozen_layer_is_its_dead_units_only_when_they_died_before_it_froze(tmp_path, order):
    # A regressor whose fc1 is found with 70% of its units dead and, elsewhere in the run, its
    # weights standing still (a gradient still reaching them: units left alive). Died at step
    # 4, frozen from step 40: the layer died first. Control: frozen from the first readings (a
    # group left at a rate of 0) and its units found dead only later: the frozen layer.
    dead_at, frozen_at = (4, 40) if order == "died_first" else (40, 4)
    rows = [
        {
            "loss": 1.0 - 0.002 * t,
            "grad_norm": 1.0,
            "lr/0": 0.01,
            "update_ratio/fc1.weight": 1e-3 if t < frozen_at else 3e-8,
            "grad_norm/fc1.weight": 0.5,
        }
        for t in range(200)
    ]
    dead = {"reason": "dead_units", "dead_units": 0.7, "limit": 0.5, "previous_reading": 0}
    frozen = {"direction": "frozen", "update_ratio": 3e-8, "low": 1e-7}
    findings = [
        ("loss_of_plasticity", dead_at, "fc1", dead, "warning"),
        ("update_ratio_out_of_range", frozen_at, "fc1.weight", frozen, "warning"),
    ]
    report = diagnose_stored(tmp_path, order, rows, findings, config={"optimizer": "Adagrad"})
    if order == "died_first":
        assert report.top.cause == "loss_of_plasticity"
        ratio = next(d for d in report.diagnoses if d.cause == "update_ratio_out_of_range")
        assert "lost its units" in ratio.why
    else:
        assert report.top.cause == "update_ratio_out_of_range"
