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
