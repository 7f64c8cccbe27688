"""Run shapes from the forty-third session.

Each change has a trigger (a held-out scenario it was found on, run here with the one-line
attach: its fault is by construction) and a control that must not move."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import diagnose_stored, held_out_run, induced_or_skip, steadygrad


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


def test_units_killed_by_a_first_update_the_run_came_back_from_are_the_harm_that_stayed(
    tmp_path,
):
    # Trigger: set 164's grain-loss regressor under RMSprop at SGD's rate (0.2): the first
    # update's gradient (6e7) sends the loss 981x up; the run comes back on its own, below where
    # it started (2.0 -> 0.24), with fc1 and fc2 mostly dead to the end. The one explosion was
    # named; what stayed, and what keeps the loss far above its floor, is the dead units.
    ctx, report = held_out_run(tmp_path, "h164_threshing_rmsprop_sgd_lr")
    induced_or_skip(ctx)
    assert report.top.cause == "loss_of_plasticity"
    assert {"fc1", "fc2"} & set(report.top.where)


@pytest.mark.parametrize("before", ["calm", "thrown_about"])
def test_units_dead_after_a_break_outlive_it_only_when_it_was_the_runs_first_trouble(
    tmp_path, before
):
    # A run breaks at step 5 (the loss 400x up, one gradient explosion wrecking the weights)
    # and comes back on its own, below where it started, with its first layer's units dead from the next reading to the end. Calm before
    # the break: the dead units are the harm that stayed. Thrown about from its first update
    # instead (20-100x its start at steps 1-4), as a step size far past 2/sharpness throws it,
    # the break was not its first trouble: the dead units do not outlive it.
    start = 2.0
    early = [2.0, 2.1, 1.9, 2.0, 1.95] if before == "calm" else [2.0, 60.0, 200.0, 40.0, 8.0]
    losses = early + [800.0] + [1.5 - 0.002 * t for t in range(100)]
    rows = [{"loss": v, "grad_norm": 1.0, "lr/0": 0.5} for v in losses]
    for t, row in enumerate(rows):
        row["dead_units/fc1"] = 0.05 if t < 5 else 0.7
    broke = {"loss_median": 800.0, "best_level": start, "best_level_step": 0, "ratio": 400.0}
    dead = {"reason": "dead_units", "dead_units": 0.7, "limit": 0.5, "previous_reading": 4}
    wrecked = {"grad_norm": 6e7, "ratio": 1e4, "wrecked_weights": True}
    findings = [
        ("loss_divergence", 5, None, {**broke, "broke_at_once": True}, "critical"),
        ("gradient_growth", 5, "fc1.bias", wrecked, "critical"),
        ("loss_of_plasticity", 8, "fc1", dead, "warning"),
    ]
    report = diagnose_stored(tmp_path, before, rows, findings, config={"optimizer": "SGD"})
    if before == "calm":
        assert report.top.cause == "loss_of_plasticity"
        assert "the dead units stayed" in report.top.summary
    else:
        plasticity = next(d for d in report.diagnoses if d.cause == "loss_of_plasticity")
        assert "the dead units stayed" not in plasticity.summary


def test_a_run_thrown_about_by_its_rate_then_back_at_its_start_names_its_dead_units(tmp_path):
    # Run live: an MLP under SGD at a rate far past 2/sharpness, its loss thrown 4-400x up over
    # its first steps until it breaks at step 7, then back at its first loss with its units
    # dead, finite. Session 39 kept the step size first here; session 49 names the dead units
    # first and the step size just below: no step throws the run any more, and what keeps it
    # from learning is the units (as when the first updates break a run), the shape four blind
    # sets' writers named loss_of_plasticity (338, 339, 358, 360).
    _, report = held_out_run(tmp_path, "lr_fast_mlp_sgd")  # a collection scenario: no checks
    causes = [d.cause for d in report.diagnoses]
    assert causes[:2] == ["loss_of_plasticity", "sharpness_above_limit"]
    assert "sat back at its first loss" in report.top.outlived


@pytest.mark.parametrize(
    "name", ["h164_plankton_deepar_elu_scale", "h160_maelstrom_variance_no_softplus"]
)
def test_a_nan_the_loss_made_from_an_output_that_crossed_zero_is_placed_after_a_finite_update(
    tmp_path, name
):
    # Triggers: set 164's DeepAR forecaster (sigma = elu(scale(h)), its '+ 1' dropped) and set
    # 160's current-speed regressor (a raw variance head): at the NaN step a few of the scale's
    # outputs crossed zero and the loss took their log. The gradient stayed finite (1/sigma),
    # so the update landed, and the replay, on the moved weights, saw every output positive:
    # the NaN was left unplaced (set 164's was even put behind the gradient spike 1/sigma made).
    # The outputs the step itself made are read, while the loop still holds them.
    ctx, report = held_out_run(tmp_path, name)
    induced_or_skip(ctx)
    assert report.top.cause == "nonfinite"
    truth = {
        "h164_plankton_deepar_elu_scale": "scale",
        "h160_maelstrom_variance_no_softplus": "var_head",
    }
    assert report.top.where == [truth[name]]


@pytest.mark.parametrize("spike_at", ["nan_step", "step_before"])
def test_a_gradient_spike_is_the_nans_own_only_at_the_step_whose_loss_was_not_finite(
    tmp_path, spike_at
):
    # A calm run whose loss is NaN at step 60, its gradient there finite and 10^6x its level
    # (the log of a value crossing zero is steep there). That spike is the NaN's own. Control:
    # a spike the step before, the loss still finite there, came first.
    nan_at = 60
    spike = nan_at if spike_at == "nan_step" else nan_at - 1
    rows = [{"loss": 1.0 - 0.005 * t, "grad_norm": 1.0, "lr/0": 0.01} for t in range(nan_at)]
    rows.append({"loss": float("nan"), "grad_norm": 1.0, "lr/0": 0.01})
    rows[spike]["grad_norm"] = 1e6
    findings = [
        ("grad_norm_spike", spike, None, {"grad_norm": 1e6, "ratio": 1e6}, "warning"),
        ("nonfinite", nan_at, None, {"loss": float("nan")}, "critical"),
    ]
    report = diagnose_stored(tmp_path, spike_at, rows, findings)
    spiked = next(d for d in report.diagnoses if d.cause == "gradient_spike")
    own = "itself was not finite" in spiked.why
    assert own == (spike_at == "nan_step")
    if own:
        assert report.top.cause == "nonfinite"


def test_output_logits_a_gradient_spikes_update_threw_are_the_spikes(tmp_path):
    # Trigger: set 163's alphorn classifier, accumulating four micro-batches, with a static
    # loss scale left undivided for one step (90): the gradient is 117x its level, the loss
    # 30x the next step, the head's log-partition 7.3 -> 11.6 at the first reading after it,
    # over the detector's bar at 12.4 a step later, and back under its level by step 104. The
    # reading just after the spike, still under the bar, hid that the spike had thrown them.
    ctx, report = held_out_run(tmp_path, "h163_alphorn_unscale_skipped")
    induced_or_skip(ctx)
    assert report.top.cause == "gradient_spike"
    logits = next(d for d in report.diagnoses if d.cause == "output_logit_divergence")
    assert "the gradient spike at step 90" in logits.why


@pytest.mark.parametrize("after_spike", [11.6, 7.6])
def test_logits_read_just_after_a_spike_were_thrown_by_it_only_if_already_half_way_up(
    tmp_path, after_spike
):
    # The log-partition read at 7.3 at step 75, a gradient spike at step 90, the reading at 91
    # (``after_spike``), and the drift found at 92 (12.4). Half way up or more at 91: the
    # spike's update threw them. Barely moved at 91: they rose after it, on their own.
    lse = {75: 7.3, 91: after_spike, 92: 12.4}
    rows = [{"loss": 0.1, "grad_norm": 0.3, "lr/0": 0.01} for _ in range(120)]
    rows[90]["grad_norm"] = 35.0
    for step, value in lse.items():
        rows[step]["logit_lse_mean"] = value
    drift = {"logit_lse_mean": 12.4, "initial": 1.8, "drift": 10.6, "previous_reading": 91}
    findings = [
        ("grad_norm_spike", 90, None, {"grad_norm": 35.0, "ratio": 117.0}, "warning"),
        ("output_logit_divergence", 92, "head", drift, "warning"),
    ]
    report = diagnose_stored(tmp_path, f"lse{after_spike:g}", rows, findings)
    logits = next(d for d in report.diagnoses if d.cause == "output_logit_divergence")
    assert ("the gradient spike at step 90" in logits.why) == (after_spike > 10)


def test_a_loss_falling_faster_and_faster_below_zero_is_read_where_it_ended(tmp_path):
    # Trigger: set 166's multi-class hinge whose relu was dropped (1 - margin, no floor) under
    # SGD with Nesterov: the loss crosses zero at step 118 and falls faster and faster, to -34
    # at the end (-20 over its last ten steps), the head's weights 2.3x and growing. Its last
    # quarter's median (-5.8) was read as where it fell to, under the ten times its start
    # (1.1) asked: named healthy. Where the run ended is its last losses.
    ctx, report = held_out_run(tmp_path, "h166_tonewood_hinge_no_clamp")
    induced_or_skip(ctx)
    assert report.top.cause == "output_logit_divergence" and report.top.where == ["head"]


@pytest.mark.parametrize("end", ["still_falling", "levelled_off"])
def test_a_loss_below_zero_has_no_minimum_only_if_still_falling_where_it_ended(tmp_path, end):
    # A loss from 1.0 that crosses zero and falls ever faster, to -25 (25x its start's size)
    # over its last ten steps, the head's weights 3x and growing. Control: the same fall
    # levelled off at -25 for its last 40 steps (a likelihood that reached its floor): no
    # objective without a minimum is claimed from the loss and weights alone.
    steps = 200
    if end == "still_falling":
        loss = [1.0 - 0.5 * (math.exp(t / 40.0) - 1.0) for t in range(steps)]
        loss = [v * 25.0 / -loss[-6] if v < 0 else v for v in loss]
    else:
        loss = [max(1.0 - 0.5 * (math.exp(t / 32.0) - 1.0), -25.0) for t in range(steps)]
    rows = [
        {"loss": v, "grad_norm": 1.0, "lr/0": 0.01, "param_norm/head.weight": 1.0 + 2.0 * t / steps}
        for t, v in enumerate(loss)
    ]
    report = diagnose_stored(tmp_path, end, rows, [], config={"output_layer": "head"})
    found = [d for d in report.diagnoses if d.cause == "output_logit_divergence"]
    assert bool(found) == (end == "still_falling")


def test_a_chain_of_layers_each_tripling_the_signal_with_a_gradient_4x_the_weights_explodes(
    tmp_path,
):
    # Trigger: set 166's Siamese change detector, ten 3x3 convolutions whose hand-written He
    # init left the kernel out of the fan-in (each 3x too large): at step 0 each of the first
    # five layers' outputs 2.5-3.6x the one before (1.4 -> 111), the gradient 3.9x the norm of
    # all the weights (under the 10x a chain needed), NaN at step 5. Named a first update past
    # the stability limit.
    ctx, report = held_out_run(tmp_path, "h166_petroglyph_fan_in_kernel")
    induced_or_skip(ctx)
    assert report.top.cause == "exploding_gradients" and report.top.first_step == 0
    assert report.top.where[0] == "encoder.0"


def test_the_same_siamese_encoder_at_the_he_scale_explodes_nothing(tmp_path):
    # Control: the same ten convolutions with the kernel in the fan-in keep the signal's scale;
    # the same SGD run trains, and nothing is said to explode from the start.
    from helpers import on_bench_path
    from torch import nn

    on_bench_path()
    from scenarios.cases_heldout166 import PetroglyphSiamese, _panels, _train
    from scenarios.common import Context, seeded

    torch.manual_seed(0)
    model = PetroglyphSiamese()
    for layer in model.encoder:
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    ctx = Context("default", tmp_path / "he")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    batches = _panels(seeded(16605), 32)
    _train(ctx, model, opt, batches, 60, torch.nn.functional.binary_cross_entropy_with_logits)
    ctx.monitor.close()
    assert all(math.isfinite(v) for v in ctx.losses)
    report = steadygrad.diagnose(tmp_path / "he")
    assert not any(d.cause == "exploding_gradients" for d in report.diagnoses)


@pytest.mark.parametrize("name", ["h165_macrame_bart_control", "h165_slalom_adagrad_control"])
def test_a_bart_learning_its_attention_and_a_clipped_heavy_tailed_regression_warn_nothing(
    tmp_path, name
):
    # Controls that warned (set 165). A Hugging Face BART built from its config: its
    # cross-attention logits grow from 0.09 (q and k at the 0.02 initialisation) to 41 and
    # level off, and were warned at 11 as compounding. A Gaussian-likelihood regressor on
    # Student-t targets under clip_grad_norm_(1.0), every step clipped (norm 2.7 before): two
    # batches at 11x the usual norm were warned, their updates clipped to every step's size.
    ctx, report = held_out_run(tmp_path, name)
    induced_or_skip(ctx)
    run = steadygrad.load(tmp_path / name)
    assert not [f for f in run.findings() if f.severity != "info"]
    assert all(d.severity == "info" for d in report.diagnoses)


def test_a_climb_with_every_weight_multiplied_each_step_is_a_decay_of_the_wrong_sign(tmp_path):
    # Trigger: set 168's fly-tying regressor, its hand-written decoupled decay of the wrong sign:
    # the norm of all the weights grows 0.58% a step from the first step to the last (5.8x),
    # the loss falls to 0.03, then climbs and steps up 4.5x at step 212. The step was read as
    # the data changing; the weights grown at one steady rate all run are what climbs.
    ctx, report = held_out_run(tmp_path, "h168_fly_tying_weight_decay_sign")
    induced_or_skip(ctx)
    assert report.top.cause == "loss_divergence" and report.top.severity != "info"
    assert "multiplies them every step" in report.top.summary


@pytest.mark.parametrize("growth", ["one_rate", "learning"])
def test_weights_multiplied_each_step_explain_a_slow_climb_no_detector_called(tmp_path, growth):
    # The loss falls to 0.03 by step 60 and creeps back to 0.15 by step 300 (no finding: the
    # detectors' baselines followed it up). The norm of all the weights grows 4.4x: at one rate
    # from first step to last (a decay of the wrong sign), the climb is theirs. Control: the
    # same 4.4x grown as learning grows weights, fast at first, then slower (the square root of
    # the step): no cause is claimed.
    steps = 300
    rows = []
    for t in range(steps):
        loss = 0.03 + 0.5 * math.exp(-t / 15) + 0.12 * max(t - 60, 0) / 240
        if growth == "one_rate":
            norm = 5.0 * 4.4 ** (t / (steps - 1))
        else:
            norm = 5.0 * (1.0 + 3.4 * math.sqrt(t / (steps - 1)))
        rows.append({"loss": loss, "grad_norm": 0.5, "lr/0": 0.01, "param_norm": norm})
    report = diagnose_stored(tmp_path, growth, rows, [])
    climbs = [d for d in report.diagnoses if d.cause == "loss_divergence"]
    if growth == "one_rate":
        assert report.top.cause == "loss_divergence"
        assert "4.4x over the run at one steady rate" in report.top.summary
    else:
        assert not climbs


def test_a_residual_stack_whose_every_block_multiplies_the_stream_explodes(tmp_path):
    # Trigger: set 167's Fixup-style residual net, its branch scale's exponent flipped (depth
    # ** 0.5 for ** -0.5) and its last convolutions left at their default init: each block's
    # first convolution reads a stream about twice the one before (1.5, 3.0, 5.5, 10, 13, 25,
    # ...), the gradient 988x the weights at step 0, NaN at step 1. Each block's second
    # convolution, reading the branch alone, broke the chain read over every layer in turn:
    # named only the NaN. Read along the stack's like layers, the chain is there.
    ctx, report = held_out_run(tmp_path, "h167_hoodoo_fixup_sign")
    induced_or_skip(ctx)
    assert report.top.cause == "exploding_gradients" and report.top.first_step == 0
    assert report.top.where[0] == "blocks.0.conv1"


def test_the_same_residual_stack_scaled_by_its_depth_explodes_nothing(tmp_path):
    # Control: the same twelve blocks with the exponent as Fixup has it (depth ** -0.5), their
    # last convolutions at the default init still: each block adds a little to the stream. The
    # same SGD run trains, and nothing is said to explode from the start.
    from helpers import on_bench_path

    on_bench_path()
    from scenarios.cases_heldout167 import HoodooErosionNet, _hoodoo, _train
    from scenarios.common import Context, seeded

    torch.manual_seed(0)
    model = HoodooErosionNet(exponent=-0.5, zero_last=False)
    ctx = Context("default", tmp_path / "fixup")
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    _train(ctx, model, opt, _hoodoo(seeded(16755), 64), 60, torch.nn.functional.mse_loss)
    ctx.monitor.close()
    assert all(math.isfinite(v) for v in ctx.losses)
    report = steadygrad.diagnose(tmp_path / "fixup")
    assert not any(d.cause == "exploding_gradients" for d in report.diagnoses)


@pytest.mark.parametrize(
    "name", ["h168_wheelwright_uncertainty_weights_control", "h165_kite_smoothing_confidence_typo"]
)
def test_a_negative_loss_vouches_against_the_logits_only_where_it_can_be_the_softmaxs(
    tmp_path, name
):
    # Control (set 168): a multi-task model whose loss weights its tasks by learnt
    # log-variances (Kendall et al.), the total running to -1.8; its classifier's logits, read
    # from a cross-entropy against class targets (never negative), grow 7 nats as it learns
    # and were warned as a divergence the loss could not vouch for. Trigger kept (set 165): a
    # hand-written label smoothing with its confidence typed 1.1, the off-class targets
    # negative, the loss with no floor: read from its log_softmax, the negative loss is the
    # softmax's own, and the logits' growth stays a divergence.
    ctx, report = held_out_run(tmp_path, name)
    induced_or_skip(ctx)
    run = steadygrad.load(tmp_path / name)
    warned = [f for f in run.findings() if f.kind == "output_logit_divergence"]
    if name.startswith("h168"):
        assert not warned and report.healthy
    else:
        assert warned and report.top.cause == "output_logit_divergence"


@pytest.mark.parametrize("name", ["h167_astrolabe_mixup_control", "h167_esker_swa_control"])
def test_a_mixup_loss_and_an_swa_tail_are_no_slow_climb(tmp_path, name):
    # Controls (set 167). A CNN trained with mixup under a one-cycle schedule: each batch's
    # loss sits near 0.15 or near 1.1 by the draw of its mixing weight, and the median of 32
    # of them jumps between the humps (0.43 to 0.68), far past the 1.25 / sqrt(32) of one
    # loss's scatter that a one-humped loss gives; it was warned as a slow climb, and the
    # one-cycle rate, falling since its peak 45 steps before, as a rate still rising. An MLP
    # whose SWA phase holds a constant rate over its last 80 steps, its loss drifting within
    # its scatter. The median's own order statistics say how far it wanders.
    ctx, report = held_out_run(tmp_path, name)
    induced_or_skip(ctx)
    run = steadygrad.load(tmp_path / name)
    assert not [f for f in run.findings() if f.severity != "info"]
    assert not [d for d in report.diagnoses if d.cause == "sharpness_above_limit"]


def test_one_batch_under_adagrad_moved_the_weights_through_its_own_gradient(tmp_path):
    # Trigger: set 167's flint-knapping regressor under Adagrad, one shard in micrometres at
    # step 90: the loss 3.75e6x, the gradient 25x its usual (clipped), and Adagrad's step,
    # divided by a running sum the one gradient barely moves yet, moved the weights' norm 37x
    # its usual step. Read as weights replaced between steps (the gradient under the 30x asked):
    # named only the loss spike.
    ctx, report = held_out_run(tmp_path, "h167_knapping_micrometre_shard")
    induced_or_skip(ctx)
    assert report.top.cause == "data_outlier" and report.top.first_step == 90


@pytest.mark.parametrize("family", ["adaptive", "sgd"])
def test_a_large_move_on_a_gradient_25x_its_usual_is_the_gradients_only_under_an_adaptive_step(
    tmp_path, family
):
    # The weights' norm moves 40x its usual step at step 60 on a gradient 25x its usual. Under
    # an adaptive step (Adagrad, RMSprop: a per-coordinate scale the one gradient barely moves)
    # that gradient moves every weight about as far as the rate: its own doing. Under SGD it
    # moves them 25x at most: something else replaced them between steps.
    from steadygrad.diagnose.rules import RunFacts, _weights_replaced

    rows = []
    norm = 10.0
    for t in range(80):
        norm += 0.4 if t == 60 else 0.01
        rows.append({"loss": 0.5, "grad_norm": 2.5 if t == 60 else 0.1, "param_norm": norm})
    diagnose_stored(tmp_path, family, rows, [], config={"optimizer_family": family})
    facts = RunFacts(steadygrad.load(tmp_path / family))
    assert _weights_replaced(facts, 60) == (family == "sgd")


def test_a_nan_made_in_one_column_of_a_concatenated_output_is_placed_at_its_head(tmp_path):
    # Trigger: set 169's vortex regressor returns cat([mean_head(h), sqrt(var_head(h))]), the
    # variance raw (no softplus); at step 47 a variance below zero makes the second column NaN
    # in the forward. The replay's walk back from the output, a level at a time, met the mean
    # head's output beside the square root and placed the NaN there. Read column by column, the
    # non-finite part is the variance head's. Control: set 142's fumarole (a NaN the loss made
    # from such an output) stays placed at its variance head (tests/test_unseen_run_shapes_33.py).
    ctx, report = held_out_run(tmp_path, "h169_whirlpool_sqrt_variance")
    induced_or_skip(ctx)
    assert report.top.cause == "nonfinite" and report.top.where == ["var_head"]
