"""Run shapes from the forty-fourth session.

Each change has a trigger (a held-out scenario it was found on, run here with the one-line
attach: its fault is by construction) and a control that must not move."""

from __future__ import annotations

import math
import random

import pytest
from helpers import diagnose_stored, held_out_run, induced_or_skip


def test_units_dead_in_a_run_that_stalled_at_chance_are_not_outlearnt_by_its_noise(tmp_path):
    # Trigger: set 165's lumber grader under RMSprop at SGD's rate (0.1): the first steps kill
    # fc1 and fc2 (98% and 94% dead at step 24) and the loss sits at chance (log 5) to the end,
    # with one loss spike at step 111. A flat loss's lowest running median fell at step 177 by
    # noise alone, read as "the loss kept improving": the dead units sank below the spike.
    ctx, report = held_out_run(tmp_path, "h165_bandsaw_rmsprop_sgd_lr")
    induced_or_skip(ctx)
    assert report.top.cause == "loss_of_plasticity"
    assert {"fc1", "fc2"} & set(report.top.where)


@pytest.mark.parametrize("after", ["flat", "learning"])
def test_a_stalling_cause_is_learnt_past_only_when_the_loss_fell_clearly_below(tmp_path, after):
    # Dead units found at step 24, then the loss: flat noise around 1.6 (a stall: a new lowest
    # running median now and then means nothing) or falling from 1.6 to 0.8 (the run learnt
    # past them: they cost it nothing yet, and rank low).
    rng = random.Random(3)
    rows = [
        {
            "loss": (1.6 if after == "flat" or t < 30 else 1.6 - 0.8 * (t - 30) / 170)
            + rng.gauss(0.0, 0.04),
            "grad_norm": 0.3,
            "lr/0": 0.1,
        }
        for t in range(200)
    ]
    dead = {"reason": "dead_units", "dead_units": 0.95, "limit": 0.5, "previous_reading": 0}
    findings = [("loss_of_plasticity", 24, "fc1", dead, "warning")]
    report = diagnose_stored(tmp_path, after, rows, findings, config={"optimizer": "RMSprop"})
    plasticity = next(d for d in report.diagnoses if d.cause == "loss_of_plasticity")
    if after == "flat":
        assert "kept improving" not in plasticity.why
        assert plasticity.confidence != "low"
    else:
        assert "kept improving" in plasticity.why
        assert plasticity.confidence == "low"


def test_rows_that_collapse_as_the_loss_pushes_every_logit_up_are_the_logits_drift(tmp_path):
    # Trigger: set 172's tied-weight GRU character model whose z-loss was added with its sign
    # flipped: from the first output reading after step 0 the loss's gradient along the
    # logits' common shift is -0.33 (cross-entropy alone gives exactly 0 there), log Z climbs
    # 7 -> 111 and the loss 4.2 -> 57. Rows collapsed from step 25 too, and the collapse was
    # named with the drift as its consequence.
    ctx, report = held_out_run(tmp_path, "h172_typesetter_zloss_sign")
    induced_or_skip(ctx)
    assert report.top.cause == "output_logit_divergence"
    assert "head" in report.top.where


@pytest.mark.parametrize("shift", ["pushed", "softmax_only"])
def test_a_collapse_is_the_pushed_logits_consequence_only_when_the_loss_pushes_them(
    tmp_path, shift
):
    # Rows collapse from step 25 (a fifth of them) while log Z drifts 5 -> 45 by step 100.
    # The loss's gradient along the logits' common shift is -0.3 from step 25 (a term of the
    # loss rewards larger logits: the drift is the cause, the collapse its consequence) or
    # about 0 (a softmax loss alone, a temperature: the collapse is the cause).
    rows = []
    for t in range(120):
        row = {"loss": 2.0 + 0.01 * t, "grad_norm": 1.0, "lr/0": 1e-3}
        if t % 25 == 0:
            row["softmax_collapse"] = 0.0 if t == 0 else 0.2
            row["logit_lse_mean"] = 5.0 + 0.4 * t
            row["output_shift_gradient"] = -0.3 if shift == "pushed" and t else -1e-5
        rows.append(row)
    collapse = {"softmax_collapse": 0.2, "fraction": 0.1, "previous_reading": 0}
    drift = {"logit_lse_mean": 35.0, "initial": 5.0, "drift": 30.0, "lse_limit": 20.0}
    findings = [
        ("softmax_collapse", 26, "head", collapse, "warning"),
        ("output_logit_divergence", 75, "head", drift, "warning"),
    ]
    report = diagnose_stored(tmp_path, shift, rows, findings, config={"optimizer": "Adam"})
    collapsed = next(d for d in report.diagnoses if d.cause == "softmax_collapse")
    if shift == "pushed":
        assert report.top.cause == "output_logit_divergence"
        assert "pushed every logit up" in collapsed.why
    else:
        assert report.top.cause == "softmax_collapse"


def test_a_run_resumed_from_a_stale_checkpoint_is_a_loss_spike(tmp_path):
    # Trigger: set 172's harp transformer resumed at step 120 from the step-40 checkpoint (a
    # string sort of the file names): the loss jumps 10x, 0.027 -> 0.27, and decays back over
    # 30 steps. The loss had still been falling through the spike test's window, and that
    # descent, read as the batches' spread, hid the jump: the run came out "healthy".
    ctx, report = held_out_run(tmp_path, "h172_harp_resume_string_sorted_checkpoint")
    induced_or_skip(ctx)
    assert report.top.cause == "loss_spike"
    assert report.top.first_step == 120


def test_a_regressors_head_that_grows_as_its_loss_climbs_makes_no_logits(tmp_path):
    # Trigger: set 177's harmonica regressor (MSE) fine-tuned with an L2-SP penalty subtracted
    # instead of added: the weights are pushed from the checkpoint, the head's fastest, and the
    # loss climbs 3x from step 150. The head's runaway weights were named output-logit
    # divergence, in a run whose outputs were never logits (no cross-entropy, nll_loss or
    # log_softmax): the loss's own climb is the cause to name.
    ctx, report = held_out_run(tmp_path, "h177_harmonica_l2sp_sign_flipped")
    induced_or_skip(ctx)
    assert report.top.cause == "loss_divergence"
    assert "output_logit_divergence" not in [d.cause for d in report.diagnoses]


@pytest.mark.parametrize("outputs", ["logits", "regression"])
def test_a_heads_runaway_weights_are_logits_only_where_logits_were_read(tmp_path, outputs):
    # The head's weights grow 1% a step from step 60 while the rest hold still, and the loss
    # climbs from step 140 (a decay of the wrong sign on the head). Where a cross-entropy read
    # the outputs as logits (log Z at each reading), that is the logits' drift; where no
    # logits were ever read (a regressor), the head's growth names no logits.
    rows = []
    for t in range(200):
        row = {
            "loss": 1.0 - 0.003 * min(t, 140) + 0.02 * max(0, t - 140),
            "grad_norm": 0.5,
            "lr/0": 0.01,
            "param_norm/head.weight": 1.0 if t < 60 else math.exp(0.01 * (t - 60)),
            "param_norm/body.weight": 3.0,
        }
        if outputs == "logits" and t % 25 == 0:
            row["logit_lse_mean"] = 2.3
        rows.append(row)
    climb = {"loss_median": 0.9, "best_level": 0.58, "best_level_step": 140, "ratio": 1.6}
    findings = [("loss_divergence", 170, None, climb, "warning")]
    config = {"optimizer": "SGD", "output_layer": "head"}
    report = diagnose_stored(tmp_path, outputs, rows, findings, config=config)
    causes = [d.cause for d in report.diagnoses]
    if outputs == "logits":
        assert report.top.cause == "output_logit_divergence"
    else:
        assert "output_logit_divergence" not in causes
