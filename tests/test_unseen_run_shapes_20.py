"""Run shapes from the twenty-fourth session's held-out sets (89-91) and what they showed.

Each change has a trigger that fails on the code before it and a control that must not move."""

from __future__ import annotations

from helpers import held_out_run, induced_or_skip

import steadygrad


def _run(tmp_path, name):
    """A held-out scenario with the one-line attach (skipped where its fault did not take)."""
    ctx, report = held_out_run(tmp_path, name)
    induced_or_skip(ctx)
    return report


def test_relu_units_of_a_recurrent_cell_that_died_are_its_lost_plasticity(tmp_path):
    # Trigger: set 91's temporal graph network, whose memory updater is an nn.RNNCell with
    # nonlinearity="relu". Its ReLU runs inside torch's kernel, where no functional call shows
    # it: its units died unseen and the run was called healthy. Its output is the ReLU's.
    report = _run(tmp_path, "h91_tgn_relu_memory_dies_sgd")
    first = report.diagnoses[0]
    assert first.cause == "loss_of_plasticity" and "memory_cell" in first.where


def test_relu_units_of_a_recurrence_first_seen_dead_after_it_blew_up_are_its_casualties(tmp_path):
    # Trigger: set 56's SampleRNN, an nn.RNN(nonlinearity="relu") whose recurrence grows until
    # it blows up at step ~30; its units, now seen, are first found dead two steps after the
    # break, as its gradients spiked. The explosion is the cause; the dead units follow it.
    report = _run(tmp_path, "h56_samplernn_recurrent_growth_sgd")
    assert report.diagnoses[0].cause == "exploding_gradients"
    dead = next(d for d in report.diagnoses if d.cause == "loss_of_plasticity")
    assert dead.consequence_of and "after the run broke" in dead.consequence_of


def test_a_healthy_relu_rnn_is_not_warned(tmp_path):
    # Control: set 70's focal-loss pixel RNN (nn.RNN with nonlinearity="relu") trains well:
    # its units, now seen, must raise nothing.
    ctx, report = held_out_run(tmp_path, "h70_focal_rnn_control")
    assert ctx.checks and all(ctx.checks.values()), ctx.checks
    run = steadygrad.load(tmp_path / "h70_focal_rnn_control")
    assert "dead_units/rnn" in run.names()  # its units are read
    assert [d.cause for d in report.diagnoses if d.severity != "info"] == []
    assert [f.kind for f in run.findings() if f.severity != "info"] == []
