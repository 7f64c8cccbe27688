"""Run shapes from the thirty-ninth session.

Each change has a trigger (a held-out scenario it was found on, run here with the one-line
attach: its fault is by construction) and a control that must not move."""

from __future__ import annotations

from helpers import held_out_run, induced_or_skip


def test_a_slow_climb_in_noisy_batches_is_the_divergence_it_is(tmp_path):
    # Trigger: set 145's stalactite regressor, an L2 penalty subtracted instead of added under
    # AdamW: the weights grow 38x and the loss's level doubles over 200 steps, while each
    # batch scatters +-50%; the running median of five never left the scatter, and the tanh
    # units the growing weights saturated were named instead. The median of the last 32
    # losses climbs out of its own scatter at step ~110.
    ctx, report = held_out_run(tmp_path, "h145_stalactite_l2_sign_bug")
    induced_or_skip(ctx)
    assert report.top.cause == "loss_divergence"
    live = [f for f in ctx.monitor.findings if f.kind == "loss_divergence"]
    assert live and live[0].evidence["window"] == 32
    assert live[0].evidence["window_best_level"] < live[0].evidence["loss_median"]


def test_a_recurrent_run_through_a_one_cycle_schedule_has_no_slow_climb(tmp_path):
    # Control: set 145's GRU under OneCycleLR (its loss rises while the rate ramps up, then
    # falls): the slow test reads nothing, nor does anything else.
    ctx, report = held_out_run(tmp_path, "h145_viola_gru_onecycle_control")
    induced_or_skip(ctx)
    assert report.healthy
    assert not any(f.severity != "info" for f in ctx.monitor.findings)


def test_attention_learnt_out_of_a_tiny_start_is_not_warned_of_as_compounding(tmp_path):
    # Trigger: set 124's healthy LLaVA text tower: its first layer's largest logit went
    # 0.15 -> 2.0 -> 8.5 -> 11.6 -> 34.7 over readings 25 steps apart; the early test read the
    # last rate as fast as the first and warned of compounding growth, though the middle one
    # had slowed to a fifth (learning, which slows, if not at every reading).
    ctx, report = held_out_run(tmp_path, "h124_video_llava_healthy")
    induced_or_skip(ctx)
    assert report.healthy
    assert not any(f.kind == "attention_logit_growth" for f in ctx.monitor.findings)


def test_a_nan_the_models_own_forward_made_is_placed_where_it_was_taken_in(tmp_path):
    # Trigger: set 124's mine-ventilation controller takes log(ppm) in its forward, before its
    # first layer; a sensor reading 0 makes -inf there. The replay found no module that made
    # it and named the model ("<root>"); it is the first layer that took it in.
    ctx, report = held_out_run(tmp_path, "h124_mine_vent_nonfinite")
    induced_or_skip(ctx)
    assert report.top.cause == "nonfinite" and report.top.where == ["gas_in"]
    assert "the model's forward made it from its finite input" in report.top.summary
