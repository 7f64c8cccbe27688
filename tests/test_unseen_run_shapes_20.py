"""Run shapes from the twenty-fourth session's held-out sets (89-91) and what they showed.

Each change has a trigger that fails on the code before it and a control that must not move."""

from __future__ import annotations

import pytest
import torch
from helpers import held_out_run, induced_report
from torch import nn

import steadygrad


def test_relu_units_of_a_recurrent_cell_that_died_are_its_lost_plasticity(tmp_path):
    # Trigger: set 91's temporal graph network, whose memory updater is an nn.RNNCell with
    # nonlinearity="relu". Its ReLU runs inside torch's kernel, where no functional call shows
    # it: its units died unseen and the run was called healthy. Its output is the ReLU's.
    report = induced_report(tmp_path, "h91_tgn_relu_memory_dies_sgd")
    first = report.diagnoses[0]
    assert first.cause == "loss_of_plasticity" and "memory_cell" in first.where


def test_relu_units_of_a_recurrence_first_seen_dead_after_it_blew_up_are_its_casualties(tmp_path):
    # Trigger: set 56's SampleRNN, an nn.RNN(nonlinearity="relu") whose recurrence grows until
    # it blows up at step ~30; its units, now seen, are first found dead two steps after the
    # break, as its gradients spiked. The explosion is the cause; the dead units follow it.
    # (The break sits at a floating-point edge: on some CPUs the NaN comes a step before the
    # units are read, and no dead units are found at all.)
    report = induced_report(tmp_path, "h56_samplernn_recurrent_growth_sgd")
    assert report.diagnoses[0].cause == "exploding_gradients"
    dead = [d for d in report.diagnoses if d.cause == "loss_of_plasticity"]
    assert all(d.consequence_of for d in dead)


def test_a_healthy_relu_rnn_is_not_warned(tmp_path):
    # Control: set 70's focal-loss pixel RNN (nn.RNN with nonlinearity="relu") trains well:
    # its units, now seen, must raise nothing.
    ctx, report = held_out_run(tmp_path, "h70_focal_rnn_control")
    assert ctx.checks and all(ctx.checks.values()), ctx.checks
    run = steadygrad.load(tmp_path / "h70_focal_rnn_control")
    assert "dead_units/rnn" in run.names()  # its units are read
    assert [d.cause for d in report.diagnoses if d.severity != "info"] == []
    assert [f.kind for f in run.findings() if f.severity != "info"] == []


def _drifting_targets_run(tmp_path, back_at=None, steps=240):
    """An MLP fit to sin(x) whose targets, from step 80, grow 3% a step (a data pipeline whose
    scale drifts); with ``back_at`` they are put right again from then on."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    losses = []
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        for step in range(steps):
            x = torch.rand(64, 1, generator=gen) * 4 - 2
            scale = 1.0 if step < 80 or (back_at and step >= back_at) else 1.03 ** (step - 80)
            loss = nn.functional.mse_loss(model(x), scale * torch.sin(x))
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
            losses.append(float(loss))
    return steadygrad.diagnose(tmp_path / "run"), losses


@pytest.mark.parametrize("back_at", [140, None])
def test_a_climb_the_run_came_all_the_way_back_from_is_a_transient(tmp_path, back_at):
    # Trigger: set 90's TD3 control, whose critic's loss tripled in its first 12 steps as its
    # targets grew with its values, and ended at 12, under the 28.8 it climbed from: it was
    # called a critical divergence. Here, targets that drift and are put right; the control
    # leaves them drifting: the loss never comes back, and the divergence stays. Put right at
    # 140, the targets step the loss up 400x after an ordinary update (the model had followed
    # the drift), and it is learnt back: a new stage of the data (the fifty-fifth session's
    # StageWatch), told at info, and no climb to call a divergence at all
    report, losses = _drifting_targets_run(tmp_path, back_at)
    if back_at is None:
        climb = next(d for d in report.diagnoses if d.cause == "loss_divergence")
        assert min(losses[-10:]) > climb.evidence["best_level"]  # the oracle: it ended above
        assert climb.severity != "info"
        return
    assert losses[140] > 100 * max(losses[120:140])  # the oracle: the step up the fix made
    assert sorted(losses[-10:])[5] < 3 * min(losses[:140])  # and learnt back
    assert all(d.severity == "info" for d in report.diagnoses)
    told = steadygrad.load(tmp_path / "run").findings()
    assert ("loss_spike", 140) in [(f.kind, f.step) for f in told if f.evidence.get("new_stage")]


def test_the_td3_critic_whose_loss_rose_then_fell_below_is_not_diagnosed(tmp_path):
    ctx, report = held_out_run(tmp_path, "h90_td3_pendulum_healthy")
    assert ctx.checks and all(ctx.checks.values()), ctx.checks
    assert [d.cause for d in report.diagnoses if d.severity != "info"] == []


def test_a_spike_the_loss_did_not_feel_whose_damping_passed_poisons_nothing(tmp_path):
    # Set 89's TFT control on Grams (eager since small models are no longer compiled): a 16x
    # gradient-norm spike at step 31 that the loss did not feel (info), after which the
    # updates shrank to 48% and were back by 100 steps on; early in training Adam's steps
    # shrink as much on their own. It was named a poisoned second moment.
    # On another CPU the spike comes at step 34, 32x, and the loss at its update rose above
    # the 20 before it: a spike it felt, a warning by design. What must not follow is the
    # poisoning: the updates before it were still Adam's start-up (its first steps are the
    # gradient's sign, larger than any after), not a level the spike damped.
    ctx, report = held_out_run(tmp_path, "h89_tft_healthy")
    assert ctx.checks and all(ctx.checks.values()), ctx.checks
    warned = [d for d in report.diagnoses if d.severity != "info"]
    assert "adam_second_moment_poisoned" not in [d.cause for d in report.diagnoses]
    for d in warned:  # the oracle: a felt spike is one whose loss left the band before it
        assert d.cause == "gradient_spike", warned
        run = steadygrad.load(tmp_path / "h89_tft_healthy")
        spike = [f for f in run.findings() if f.kind == "grad_norm_spike" and f.severity != "info"]
        assert spike and all(f.evidence["loss_after"] > f.evidence["loss_band"] for f in spike)
