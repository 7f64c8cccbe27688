"""Run shapes from the twenty-second session's held-out sets (79-81) and what they showed.

Each change has a trigger that fails on the code before it and a control that must not move."""

from __future__ import annotations

import pytest
from helpers import held_out_run, induced_or_skip


def test_gradients_that_rose_with_one_shock_and_fell_back_did_not_explode(tmp_path):
    # Trigger: set 81's SoundStream codebook re-initialised at step 200. The loss jumped 3x,
    # the gradient norm 4x, and the growth detector (which measures a tensor's gradient
    # against the lowest level it ever held, here its second step's) found "growth" four
    # steps later, named first; by the end the gradient norm was back at its level before.
    ctx, report = held_out_run(tmp_path, "h81_loss_spike_rvq_codebook_reset")
    induced_or_skip(ctx)
    assert report.top.cause == "loss_spike"
    exploding = [d for d in report.diagnoses if d.cause == "exploding_gradients"]
    assert exploding and "fell back" in exploding[0].why


@pytest.mark.parametrize("name", ["h48_deeponet_negative_decay_branch_sgd", "h27_afm_flipped_l2"])
def test_gradients_that_grew_on_after_a_spike_exploded(tmp_path, name):
    # Controls: a spike a few steps before the growth was found, and the gradients went on
    # growing until the run broke: an explosion, whatever came just before it.
    ctx, report = held_out_run(tmp_path, name)
    induced_or_skip(ctx)
    assert report.top.cause == "exploding_gradients"


def test_units_killed_by_a_resume_that_forgot_the_optimizer_are_its_harm(tmp_path):
    # Trigger: set 83's set detector, resumed at step 200 with its Adagrad state built afresh.
    # The loss spiked 2.9x (a loss spike, under the 3x a restart's jolt was asked for) and a
    # backbone layer's units died two steps later: that death was named first, though the
    # resume made it.
    ctx, report = held_out_run(tmp_path, "h83_hungarian_resume_fresh_adagrad")
    induced_or_skip(ctx)
    assert report.top.cause == "loss_spike"
    assert "started again from nothing" in report.top.summary
    dead = [d for d in report.diagnoses if d.cause == "loss_of_plasticity"]
    assert dead and "jolt" in dead[0].why


def test_units_killed_with_no_restart_lost_their_plasticity(tmp_path):
    # Control: set 79's NeuMF tower, killed by a learning rate meant for sparse embeddings.
    ctx, report = held_out_run(tmp_path, "h79_ncf_adagrad_dead_tower")
    induced_or_skip(ctx)
    assert report.top.cause == "loss_of_plasticity"
