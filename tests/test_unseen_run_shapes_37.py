"""Run shapes from the forty-first session.

Each change has a trigger (a held-out scenario it was found on, run here with the one-line
attach: its fault is by construction) and a control that must not move."""

from __future__ import annotations

import math

import pytest
from helpers import diagnose_stored, held_out_run, induced_or_skip


def test_one_batch_whose_update_threw_a_sgd_run_into_a_break_is_named(tmp_path):
    # Trigger: set 153's visibility regressor under plain SGD; the batch at step 100 is in
    # metres for km: its loss 2.5e6x the baseline, its gradient 100x, on weights of a calm run.
    # Its update threw the weights and the run broke two steps later. The rule for steps past
    # 2/sharpness counted that batch's jump as the first of its growing gradients (from step
    # 99) and was named; the outlier rule wanted finite steps after the spike to read.
    ctx, report = held_out_run(tmp_path, "h153_fog_bank_metres_shard")
    induced_or_skip(ctx)
    assert report.top.cause == "data_outlier" and report.top.first_step == 100
    assert "threw the weights" in report.top.summary


@pytest.mark.parametrize("shape", ["one_batch", "overshoot", "late_break", "new_level"])
def test_a_break_is_one_batchs_only_when_it_came_straight_from_it(tmp_path, shape):
    # Trigger: a calm SGD run whose loss jumps 1e6x in one step, with the gradient spike that
    # batch made, and breaks two steps later: the batch threw it. Controls: the same break
    # reached by gradients growing 3-4x a step with no one-step jump (steps past 2/sharpness);
    # a one-batch jump the run went on from for 20 steps before it broke (no straight line);
    # a jump every batch after it shared (set 105's renderer: the data changed from there on).
    calm = 100
    rows = [{"loss": 0.02 + 0.5 * 0.8**t, "grad_norm": 0.15, "lr/0": 0.1} for t in range(calm)]
    if shape == "overshoot":
        rows += [{"loss": 0.02 * 3**k, "grad_norm": 0.15 * 4**k, "lr/0": 0.1} for k in range(1, 5)]
        broke, findings = calm + 3, []
    else:
        rows.append({"loss": 5e4, "grad_norm": 15.0, "lr/0": 0.1})
        wait = 2 if shape == "one_batch" else 20
        level = 4e4 if shape == "new_level" else 0.5  # the steps after: like it, or not
        rows += [{"loss": level, "grad_norm": 1.0, "lr/0": 0.1} for _ in range(wait - 1)]
        rows += [{"loss": 1e4 * 10**k, "grad_norm": 1e3 * 10**k, "lr/0": 0.1} for k in range(3)]
        broke = calm + wait
        spike = {"ratio": 2.5e6, "baseline": 0.02, "loss": 5e4}
        findings = [
            ("loss_spike", calm, None, spike, "warning"),
            ("gradient_spike", calm, "fc.weight", {"spike_factor": 100.0}, "warning"),
        ]
    rows += [{"loss": math.nan, "grad_norm": math.nan, "lr/0": 0.1} for _ in range(3)]
    findings += [
        ("loss_divergence", broke, None, {"ratio": 5e5, "best_level": 0.02}, "critical"),
        ("nonfinite", len(rows) - 3, None, {}, "critical"),
    ]
    report = diagnose_stored(tmp_path, shape, rows, findings, config={"optimizer_family": "sgd"})
    if shape == "one_batch":
        assert report.top.cause == "data_outlier" and report.top.first_step == calm
        assert "broke 2 step(s) later" in report.top.summary
    else:
        assert "data_outlier" not in report.causes()
        if shape == "overshoot":
            assert report.top.cause == "sharpness_above_limit"


def test_weights_multiplied_by_a_decay_of_the_wrong_sign_are_the_climbs(tmp_path):
    # Trigger: set 150's still regressor, Adamax with a hand decay p *= (1 + lr * wd): fc1's
    # weights grew 1% a step, the loss climbed from step 72, and the gradients were seen to
    # grow only at step 295. Exploding gradients was named, dated to step 0 by fc1's growth:
    # the gradients followed the climb, which the growing weights explain.
    ctx, report = held_out_run(tmp_path, "h150_pot_still_decay_sign")
    induced_or_skip(ctx)
    assert report.top.cause == "loss_divergence" and "wrong sign" in report.top.summary
    assert report.top.why == "a symptom: what happened; no cause found explains it"
    # the gradients followed the weights the decay multiplied every step (and the climb); since
    # the fifty-fifth session a 2x step of its noisy loss near 0.003, held, starts the gradient's
    # levels again, and their growth may go untold: either way no explosion of their own
    explosions = [d for d in report.diagnoses if d.cause == "exploding_gradients"]
    assert all(e.confidence == "low" and "multiplies them every step" in e.why for e in explosions)


@pytest.mark.parametrize("found_after", [5, 150])
def test_a_weight_that_ran_away_is_the_explosions_only_when_gradients_grew_with_the_climb(
    tmp_path, found_after
):
    # One weight grew 20x geometrically while the loss set no new best, and it climbed from
    # step 100. Gradient growth
    # found 5 steps into the climb: the gradients grew through that weight (exploding
    # gradients, placed there). Found 150 steps into it: they followed the climb.
    rows = []
    for t in range(300):
        # the loss best at step 40, then creeping up, and climbing from step 100
        row = {"loss": 1.0 + 0.1 * ((t - 40) / 60) ** 2 + 0.02 * max(t - 100, 0)}
        for tensor, factor in {"stem.weight": 1.2, "trans1.weight": 20.0}.items():
            row[f"param_norm/{tensor}"] = factor ** (t / 299)
        rows.append(row)
    findings = [
        ("loss_divergence", 100, None, {"ratio": 3.0, "best_level_step": 40}, "critical"),
        ("gradient_growth", 100 + found_after, "stem.weight", {}, "critical"),
    ]
    report = diagnose_stored(tmp_path, str(found_after), rows, findings)
    if found_after <= 10:
        assert report.top.cause == "exploding_gradients" and report.top.where[0] == "trans1"
    else:
        assert report.top.cause == "loss_divergence" and "trans1" in report.top.summary


def test_a_hand_loss_with_no_floor_is_the_output_running_away(tmp_path):
    # Trigger: set 150's in-court classifier, a logistic loss written by hand that lost its
    # softplus, -(2y - 1) * logit: the loss fell without bound (to -986) as the head's logits
    # grew, and no interception reads a hand loss: only dead units were named, late.
    ctx, report = held_out_run(tmp_path, "h150_pelota_margin_no_softplus")
    induced_or_skip(ctx)
    assert report.top.cause == "output_logit_divergence" and report.top.where == ["head"]
    assert "softplus" in report.top.fixes[0].code


@pytest.mark.parametrize("shape", ["no_floor", "gaussian_floor", "head_still"])
def test_a_loss_below_zero_is_one_with_no_minimum_only_if_it_never_slows(tmp_path, shape):
    # Trigger: a loss falling 5 a step below zero while the head's weights grow linearly.
    # Controls: a Gaussian likelihood that fell below zero and slows toward its floor (its
    # head grew 3x as it fitted); the same fall with the head's weights holding still.
    rows = []
    for t in range(200):
        if shape == "gaussian_floor":
            loss, head = 1.0 - 2.5 * (1 - math.exp(-t / 40)), 1.0 + 2.0 * (1 - math.exp(-t / 40))
        else:
            loss, head = 0.5 - 5.0 * t, 1.0 if shape == "head_still" else 1.0 + 0.2 * t
        rows.append({"loss": loss, "param_norm/head.weight": head, "param_norm/body.weight": 3.0})
    config = {"output_layer": "head"}
    report = diagnose_stored(tmp_path, shape, rows, [], config=config)
    if shape == "no_floor":
        assert report.top.cause == "output_logit_divergence" and report.top.where == ["head"]
        assert "without slowing" in report.top.summary
    else:
        assert report.healthy


def test_a_hinge_without_its_clamp_still_falling_at_the_end_is_read(tmp_path):
    # Trigger: set 154's strum classifier, a Crammer-Singer hinge that lost .clamp(min=0): the
    # loss fell to -3034 with the head's weights 6.6x; its last loss stood above the median of
    # the last five (noise), and the test for a loss at its lowest wanted the last one lowest.
    ctx, report = held_out_run(tmp_path, "h154_ukulele_hinge_without_clamp")
    induced_or_skip(ctx)
    assert report.top.cause == "output_logit_divergence" and report.top.where == ["head"]


def test_a_tanh_stack_past_the_edge_of_chaos_explodes_back_through_depth(tmp_path):
    # Trigger: set 154's twelve-layer tanh MLP initialised at gain 4 (a loss weight taken as
    # the init gain): at step 0 each layer's weight gradient stood 1.3-1.7x the next one's,
    # net.2's 64x net.22's; the chain wanted 1.5x at every layer and 100x in all, and the
    # saturated units were named. Hand-computed thresholds: tests/test_unseen_run_shapes_33.py.
    ctx, report = held_out_run(tmp_path, "h154_silversmith_loss_weight_as_init_gain")
    induced_or_skip(ctx)
    # the chain from net.22 back to net.2, and net.0 before it rising still (1.04x net.2)
    assert report.top.cause == "exploding_gradients" and report.top.where[:2] == ["net.0", "net.2"]
    assert report.top.first_step == 0


def test_a_gradient_at_initialisation_is_placed_where_the_signal_was_amplified(tmp_path):
    # Trigger: set 151's ten-layer ReLU MLP with the He gain applied twice: each layer's output
    # 1.2-1.8x the one before (2.0 -> 57 at step 0), the gradient 180x the weights, NaN at step
    # 3. The growth found at the first record named the tensor with the largest gradient for
    # its norm, layers.6.bias (every bias at 0.001-0.016); the writer said layers.0.
    ctx, report = held_out_run(tmp_path, "h151_ropewalk_double_gain_init")
    induced_or_skip(ctx)
    assert report.top.cause == "exploding_gradients" and report.top.where[0] == "layers.0"
    assert "through depth from the first step" in report.top.summary


def test_a_nan_after_a_harder_stage_of_the_data_is_the_nans(tmp_path):
    # Trigger: set 155's wave-celerity layer, sqrt of a predicted depth with no clamp, fed
    # swash-zone readings from step 60: the loss (0.02 -> 5.7) and the gradient (0.16 -> 7.1)
    # stepped up at once and fell after, then sqrt gave NaN at step 95 in celerity. The
    # gradient's step was named exploding gradients; the loss's, a critical climb.
    ctx, report = held_out_run(tmp_path, "h155_shoaling_sqrt_negative_depth")
    induced_or_skip(ctx)
    assert report.top.cause == "nonfinite" and report.top.where == ["celerity"]


@pytest.mark.parametrize("after", ["fell", "climbed"])
def test_a_step_with_the_data_is_no_growth_only_if_the_run_fell_from_it(tmp_path, after):
    # The loss and the gradient step up 200x and 45x at once at step 60, after an ordinary
    # update; NaN at step 95 from one module. "fell": both fall from there (a harder stage of
    # the data, learnt): the NaN is what to name. Control, "climbed": both grow on from it.
    rows = [{"loss": 0.025 + 0.002 * math.sin(t), "grad_norm": 0.16} for t in range(60)]
    for k in range(35):
        if after == "fell":
            rows.append({"loss": 5.0 - 0.12 * k, "grad_norm": 7.0 - 0.1 * k})
        else:
            rows.append({"loss": 5.0 * 1.05**k, "grad_norm": 7.0 * 1.05**k})
    rows.append({"loss": math.nan, "grad_norm": math.nan})
    origin = {"module": "celerity", "output_norm": math.nan, "replayed": True}
    findings = [
        (
            "loss_divergence",
            64,
            None,
            {"ratio": 232.0, "best_level": 0.024, "best_level_step": 42},
            "critical",
        ),
        ("gradient_growth", 64, "depth.2.bias", {"growth": 45.0, "started_at_step": 55}, "warning"),
        ("nonfinite", 95, "celerity", {"loss": math.nan, "forward_origin": origin}, "critical"),
    ]
    report = diagnose_stored(tmp_path, after, rows, findings)
    if after == "fell":
        assert report.top.cause == "nonfinite" and report.top.where == ["celerity"]
    else:
        assert report.top.cause == "exploding_gradients"
