"""Run shapes from the forty-second session.

Each change has a trigger (a held-out scenario it was found on, run here with the one-line
attach: its fault is by construction) and a control that must not move."""

from __future__ import annotations

import math

import pytest
from helpers import diagnose_stored, held_out_run, induced_or_skip


def test_one_batch_whose_error_made_the_gradient_is_the_break_even_as_the_loss_climbs_on(tmp_path):
    # Trigger: set 156's rope-strength regressor under SGD with momentum; one shard at step 120
    # has its targets in newtons for kilonewtons: the loss jumps 1e7x, the gradient 7,500x, on
    # a calm run's weights, and the thrown weights keep every later loss higher still (no next
    # batch stood below it to show the data had not changed). Three chance rises of the
    # gradient before the batch were read as steps past 2/sharpness.
    ctx, report = held_out_run(tmp_path, "h156_ropemaking_strength_newton_shard")
    induced_or_skip(ctx)
    assert report.top.cause == "data_outlier" and report.top.first_step == 120
    assert "never came back" in report.top.summary


def test_a_longer_sequence_exposing_a_recurrence_is_still_its_explosion(tmp_path):
    # Control: set 114's IRNN tagger, whose curriculum moves to 256-byte windows at step 100:
    # the loss rises 34x and the gradient 3,000x (amplified through time, not made by an error
    # in the batch), and the run breaks two steps later. It stays an explosion.
    ctx, report = held_out_run(tmp_path, "h114_sentence_boundary_irnn_curriculum_asgd")
    induced_or_skip(ctx)
    assert report.top.cause == "exploding_gradients"
    assert "data_outlier" not in report.causes()


@pytest.mark.parametrize("gradient_ratio", [100.0, 1e7])
def test_a_break_at_a_spike_is_the_batchs_only_when_the_loss_rose_more_than_the_gradient(
    tmp_path, gradient_ratio
):
    # A calm SGD run; at step 100 the loss jumps 2.5e6x its baseline and the run climbs on from
    # there to a NaN three steps later, each loss above the last. The batch's error made the
    # gradient when the gradient rose less than the loss did (a squared error grows with the
    # error's square, its gradient with the error); a gradient risen more than the loss was
    # amplified by the network, which no bad batch explains.
    calm = 100
    rows = [{"loss": 0.02 + 0.5 * 0.8**t, "grad_norm": 0.15, "lr/0": 0.1} for t in range(calm)]
    rows += [{"loss": 5e4 * 100**k, "grad_norm": 15.0 * 100**k, "lr/0": 0.1} for k in range(3)]
    rows += [{"loss": math.nan, "grad_norm": math.nan, "lr/0": 0.1} for _ in range(3)]
    spike = {"ratio": 2.5e6, "baseline": 0.02, "loss": 5e4}
    findings = [
        ("loss_spike", calm, None, spike, "warning"),
        ("grad_norm_spike", calm, None, {"ratio": gradient_ratio, "grad_norm": 15.0}, "warning"),
        ("gradient_spike", calm, "fc.weight", {"spike_factor": 100.0}, "warning"),
        ("loss_divergence", calm, None, {"ratio": 2.5e6, "best_level": 0.02}, "critical"),
        ("nonfinite", calm + 3, None, {}, "critical"),
    ]
    name = f"ratio{gradient_ratio:g}"
    report = diagnose_stored(tmp_path, name, rows, findings, config={"optimizer_family": "sgd"})
    if gradient_ratio < spike["ratio"]:
        assert report.top.cause == "data_outlier" and report.top.first_step == calm
    else:
        assert "data_outlier" not in report.causes()


def test_first_updates_that_killed_the_units_of_a_run_stuck_where_it_started_are_the_units(
    tmp_path,
):
    # Trigger: set 156's lawn-bowls classifier under RMSprop at SGD's rate (0.1) on inputs
    # shifted to all-positive: the first update sends the loss 10,000x up, it comes back to
    # chance (1.8 -> 2.1) and sits there, 98% of the first layer's ReLUs dead. The first
    # updates' break was named; the dead units are what keep it from learning.
    ctx, report = held_out_run(tmp_path, "h156_lawn_bowls_rmsprop_dead_relu")
    induced_or_skip(ctx)
    assert report.top.cause == "loss_of_plasticity"
    assert "body.0" in report.top.where


@pytest.mark.parametrize("shape", ["stuck", "bouncing", "no_dead_units", "nan"])
def test_a_run_broken_by_its_first_updates_is_its_units_only_when_it_sits_still_with_them_dead(
    tmp_path, shape
):
    # A classifier's first update throws its loss 1,000x up; it comes back to where it started
    # and sits there with its first layer's units dead ("stuck"): the dead units. Controls: the
    # same run still thrown about, three times where it started ("bouncing"); stuck, with no
    # unit found dead; and one that went on to a NaN: each is the step size past its limit.
    start = 1.8
    end = {"stuck": 2.0, "bouncing": 6.0, "no_dead_units": 2.0, "nan": 2.0}[shape]
    rows = [{"loss": start, "grad_norm": 1.0, "lr/0": 0.1}]
    rows += [{"loss": 2e3, "grad_norm": 1e3, "lr/0": 0.1} for _ in range(6)]
    rows += [{"loss": end, "grad_norm": 1.0, "lr/0": 0.1} for _ in range(60)]
    if shape == "nan":
        rows += [{"loss": math.nan, "grad_norm": math.nan, "lr/0": 0.1} for _ in range(3)]
    broke = {"loss_median": 2e3, "best_level": start, "best_level_step": 0, "ratio": 1.1e3}
    findings = [("loss_divergence", 1, None, {**broke, "broke_at_once": True}, "critical")]
    if shape != "no_dead_units":
        dead = {"reason": "dead_units", "dead_units": 0.98, "limit": 0.5, "previous_reading": 0}
        findings.append(("loss_of_plasticity", 10, "body.0", dead, "warning"))
    if shape == "nan":
        findings.append(("nonfinite", len(rows) - 3, None, {}, "critical"))
    config = {"optimizer_family": "rmsprop"}
    report = diagnose_stored(tmp_path, shape, rows, findings, config=config)
    if shape == "stuck":
        assert report.top.cause == "loss_of_plasticity"
        assert "sharpness_above_limit" not in [d.cause for d in report.diagnoses[:1]]
    else:
        assert report.top.cause == "sharpness_above_limit"


def test_a_spike_in_a_run_that_throws_its_loss_about_is_no_bad_batch(tmp_path):
    # Trigger: set 157's quoits classifier under RMSprop at SGD's rate on raw inputs: its
    # loss jumps 10-70x every few tens of steps; the one at step 105 (37x, back within 5) was
    # named a bad batch above the dead first layer the writer induced.
    ctx, report = held_out_run(tmp_path, "h157_quoits_rmsprop_sgd_lr")
    induced_or_skip(ctx)
    assert "data_outlier" not in report.causes()
    assert report.top.cause == "loss_of_plasticity" and "fc1" in report.top.where


@pytest.mark.parametrize("earlier_jump", [5.0, 25.0])
def test_a_one_batch_spike_is_the_datas_only_where_the_run_was_calm_before(tmp_path, earlier_jump):
    # A run with a loss spike 40x its level at step 105, back at once; before it, the loss
    # had jumped 5x at five steps (a run's scatter the spike stands far out of: a bad batch) or
    # 25x at one of them (more than half the spike's rise, among five of a tenth of it or
    # more: a run that throws its loss about, no batch of its own). Oracle: the jumps against
    # the spike's, by construction.
    rows = [{"loss": 1.0 + 0.01 * (t % 3), "grad_norm": 0.5, "lr/0": 0.01} for t in range(150)]
    for t in (25, 40, 55, 70):
        rows[t]["loss"] = 5.0
    rows[85]["loss"] = earlier_jump
    # a squared error 40x its level: the error 6.3x, the gradient with it
    rows[105] = {"loss": 40.0, "grad_norm": 3.2, "lr/0": 0.01}
    spike = {"ratio": 40.0, "baseline": 1.0, "loss": 40.0}
    findings = [
        ("loss_spike", 105, None, spike, "warning"),
        ("grad_norm_spike", 105, None, {"ratio": 6.4, "grad_norm": 3.2}, "warning"),
    ]
    name = f"jump{earlier_jump:g}"
    report = diagnose_stored(tmp_path, name, rows, findings, config={"optimizer_family": "adam"})
    if earlier_jump * 2 < 40.0:
        assert report.top.cause == "data_outlier" and report.top.first_step == 105
    else:
        assert "data_outlier" not in report.causes()


def test_a_signal_amplified_a_little_at_every_layer_from_the_start_is_an_explosion(tmp_path):
    # Trigger: set 156's ten-layer ReLU MLP with its init gain applied twice (1.3x the He
    # scale): each layer's output 1.25-1.5x the one before through nine layers (20x in all,
    # under the 30x asked then), the gradient 20x the weights' norm at step 0, NaN at step 3.
    # Named a first update past the stability limit; no standard initialisation makes such a
    # chain. The control, the same stack at the He gain, is
    # tests/test_unseen_run_shapes_33.py::test_the_same_relu_stack_at_the_he_gain_is_no_chain.
    ctx, report = held_out_run(tmp_path, "h156_crochet_tension_gain_twice")
    induced_or_skip(ctx)
    assert report.top.cause == "exploding_gradients" and report.top.first_step == 0
    assert report.top.where[0] == "net.0"


def test_a_temperature_applied_the_wrong_way_dates_the_collapse_from_the_start(tmp_path):
    # Trigger: set 142's nightjar classifier divides its logits by a teacher's temperature of
    # 0.02 (times 50, read as `output_scale` from step 0); rows collapse at the first reading
    # after (step 25), and the 50x larger steps kill ReLUs in body.2 by step 24: the dead units
    # were named first. The number was there from step 0; the collapse is dated from it.
    ctx, report = held_out_run(tmp_path, "h142_nightjar_temperature_bug")
    induced_or_skip(ctx)
    assert report.top.cause == "softmax_collapse" and report.top.first_step == 0
    assert "times 50" in report.top.summary


@pytest.mark.parametrize("scale", [10.0, 50.0])
def test_only_a_number_past_the_contrastive_defaults_dates_a_collapse_from_the_start(
    tmp_path, scale
):
    # A classifier's logits are its head's output times a fixed number, read at step 0 and on
    # the output signal's cadence (every 25); rows are collapsed from step 25. Times 50 (a
    # temperature of 0.02 applied the wrong way) dates the collapse from step 0; times 10 (an
    # InfoNCE temperature of 0.1) leaves it where the cadence read it.
    rows = []
    for step in range(80):
        row = {"loss": 1.0, "grad_norm": 1.0, "lr/0": 0.01}
        if step % 25 == 0:
            row |= {"softmax_collapse": 0.0 if step == 0 else 0.9, "output_scale": scale}
        rows.append(row)
    found = {"fraction": 0.9, "limit": 0.1}
    findings = [("softmax_collapse", 50, "head", found, "warning")]
    report = diagnose_stored(tmp_path, f"x{scale:g}", rows, findings)
    collapse = next(d for d in report.diagnoses if d.cause == "softmax_collapse")
    assert collapse.first_step == (0 if scale >= 20 else 25)


def test_a_gradient_the_network_multiplied_into_a_nan_the_step_after_is_an_explosion(tmp_path):
    # Trigger: set 159's sled-trail graph network, whose message passing sums (not averages)
    # its neighbours: denser race graphs from step 80 multiply the signal at every round; the
    # loss rises 5e7x, the gradient 9e8x (19x more), NaN at step 81. With no step between the
    # spike and the NaN to see the loss compound, 37 gradient spikes were named.
    ctx, report = held_out_run(tmp_path, "h159_dog_sled_trail_sum_aggregation")
    induced_or_skip(ctx)
    assert report.top.cause == "exploding_gradients" and report.top.first_step == 80


@pytest.mark.parametrize("gradient_ratio", [1e3, 1e5])
def test_a_spike_straight_into_a_nan_is_an_explosion_only_if_the_gradient_outgrew_the_loss(
    tmp_path, gradient_ratio
):
    # A calm SGD run; at step 100 the loss jumps 2,500x and the next step is NaN. A gradient
    # risen 40x more than the loss (1e5) was multiplied on its way back: an explosion. One
    # risen less than the loss (1e3) is what a batch's error makes: the batch threw the run.
    calm = 100
    rows = [{"loss": 0.02 + 0.5 * 0.8**t, "grad_norm": 0.15, "lr/0": 0.1} for t in range(calm)]
    rows.append({"loss": 50.0, "grad_norm": 0.15 * gradient_ratio, "lr/0": 0.1})
    rows += [{"loss": math.nan, "grad_norm": math.nan, "lr/0": 0.1} for _ in range(3)]
    spike = {"ratio": 2.5e3, "baseline": 0.02, "loss": 50.0}
    findings = [
        ("loss_spike", calm, None, spike, "warning"),
        ("grad_norm_spike", calm, None, {"ratio": gradient_ratio}, "warning"),
        ("gradient_spike", calm, "fc.weight", {"spike_factor": gradient_ratio}, "critical"),
        ("loss_divergence", calm, None, {"ratio": 2.5e3, "best_level": 0.02}, "critical"),
        ("nonfinite", calm + 1, None, {}, "critical"),
    ]
    name = f"g{gradient_ratio:g}"
    report = diagnose_stored(tmp_path, name, rows, findings, config={"optimizer_family": "sgd"})
    if gradient_ratio >= 10 * spike["ratio"]:
        assert report.top.cause == "exploding_gradients" and report.top.first_step == calm
    else:
        assert report.top.cause == "data_outlier" and "exploding_gradients" not in report.causes()


def test_a_loss_with_no_minimum_is_read_from_the_heads_outputs_when_its_weights_barely_grow(
    tmp_path,
):
    # Trigger: set 161's spore-print tagger, binary cross-entropy fed 0-255 pixel values as
    # targets (the /255 dropped): the loss has no minimum and falls, faster and faster, to -964;
    # every layer carries the growth a little, the head's weights only 1.3x, its outputs 25x.
    # Named healthy. Control: set 149's Gaussian-likelihood transformer (a softplus variance
    # with a floor), whose loss falls below zero and its outputs 5x as the variance shrinks.
    ctx, report = held_out_run(tmp_path, "h161_spore_print_png_targets")
    induced_or_skip(ctx)
    assert report.top.cause == "output_logit_divergence" and report.top.where == ["head"]
    ctx, report = held_out_run(tmp_path, "h149_cordwainer_last_control")
    induced_or_skip(ctx)
    assert report.healthy


def test_a_head_thrown_by_the_few_steps_an_overflowing_scaler_took_is_the_overflows(tmp_path):
    # Trigger: set 162's power-hammer regressor fed raw newtons under fp16 autocast: the loss
    # stands at 8e9 from step 0, the GradScaler skips the first 18 steps (past its search for a
    # scale: the gradients overflow float16 unscaled), and the three steps it takes after throw
    # the head's weights 75x. The head's runaway was named (a decay of the wrong sign?); the
    # overflow from the first step is what made those steps. The controls, heads that ran away
    # with every step taken, are tests/test_unseen_run_shapes_4.py to _6.py.
    ctx, report = held_out_run(tmp_path, "h162_power_hammer_raw_newtons")
    induced_or_skip(ctx)
    assert report.top.cause == "amp_overflow"
    # a regressor's head makes no logits: its runaway weights are no logit drift (see
    # tests/test_unseen_run_shapes_40.py)
    assert "output_logit_divergence" not in report.causes()


@pytest.mark.parametrize("broke", [True, False])
def test_an_overflow_episode_before_the_run_broke_is_not_called_benign(tmp_path, broke):
    # Set 126's hull-fouling estimator: its shaft power came in watts from step 80, the
    # GradScaler skipped 18 steps with the loss finite (8e5), and the run broke at step 98: the
    # overflow was called benign, "not a divergence", beside the break. Control: the same
    # episode in a run that did not break stays benign. Oracle: the break, by construction.
    rows = []
    for t in range(140):
        row = {"loss": 1.0 / (1 + t / 20), "grad_norm": 1.0, "lr/0": 0.01}
        if 80 <= t < 98:
            row["optimizer_skipped"] = 1.0
        if broke and t >= 98:
            row["loss"] = 1e4 * (t - 97)
        rows.append(row)
    findings = [("amp_overflow", 80, None, {"nonfinite_grads": 10.0}, "info")]
    if broke:
        findings.append(
            ("loss_divergence", 98, None, {"ratio": 1e4, "best_level": 0.2}, "critical")
        )
    report = diagnose_stored(tmp_path, f"broke{broke}", rows, findings)
    amp = next(d for d in report.diagnoses if d.cause == "amp_overflow")
    assert ("benign" in amp.summary) is not broke
    assert ("before the run broke at step 98" in amp.summary) is broke
