"""Run shapes from the thirty-ninth session.

Each change has a trigger (a held-out scenario it was found on, run here with the one-line
attach: its fault is by construction) and a control that must not move."""

from __future__ import annotations

import math

import pytest
from helpers import diagnose_stored, held_out_run, induced_or_skip


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


def _thrown_rows(glitch: bool) -> list[dict]:
    """A transformer's loss easing from 4 to 2.6 nats; attention logits read every 25 steps at
    5-6 until step 150, at 120-130 from 175 on; with ``glitch``, the rate raised 50x for steps
    170-172 (and the loss up 0.8 nats for a few steps after)."""
    rows = []
    for t in range(260):
        loss = 2.6 + 1.4 * math.exp(-t / 50) + 0.03 * (((t * 37) % 11) / 11 - 0.5)
        if glitch and 171 <= t <= 176:
            loss += 0.8
        row = {"loss": loss, "lr/0": 0.05 if glitch and 170 <= t < 173 else 1e-3}
        if t % 25 == 0:
            row["attn_logit_max/l.0.attn"] = 5.0 + t / 150 if t <= 150 else 120.0 + t / 25
        rows.append(row)
    return rows


@pytest.mark.parametrize("glitch", [True, False])
def test_attention_logits_a_raise_of_the_rate_threw_are_its_consequence(tmp_path, glitch):
    # Trigger: sets 107 and 121, a warm restart and a one-step rate glitch: the logits stood
    # at 3.7-6.7 when the rate was raised at a stroke, and at 80-170 at the next readings; the
    # raise passed (put back, or the loss came back) and the report named attention growth
    # first. Control: the same rise with no raise before it stays the cause.
    spike = {"loss": 3.5, "baseline": 2.7, "z": 30.0, "ratio": 1.3}
    growth = {"attn_logit_max": 123.0, "threshold": 100.0, "previous_reading": 150}
    findings = [("attention_logit_growth", 175, "l.0.attn", growth, "warning")]
    if glitch:
        findings.insert(0, ("loss_spike", 171, None, spike, "warning"))
    report = diagnose_stored(tmp_path, str(glitch), _thrown_rows(glitch), findings)
    attention = next(d for d in report.diagnoses if d.cause == "attention_logit_growth")
    if glitch:
        assert "raised 4x or more at a stroke at step 170" in attention.consequence_of
        assert report.top.cause != "attention_logit_growth"
    else:
        assert not attention.consequence_of and report.top.cause == "attention_logit_growth"


@pytest.mark.parametrize(
    ("name", "cause", "where"),
    [
        # a softmax written out as exp(s - s.amax(-1)) / sum, the 1/sqrt(d) left out and the
        # q/k group at 10x its rate: no softmax call, so no attention was seen
        ("h147_change_ringing_qk_scale", "attention_logit_growth", ["attn"]),
        # nll_loss on the head's raw scores (the log_softmax forgotten): no log-probabilities,
        # so no logits were read, and the loss fell to -59 "healthy"
        ("h147_sitar_raga_raw_nll", "output_logit_divergence", ["head"]),
    ],
)
def test_mechanisms_written_out_by_hand_are_seen(tmp_path, name, cause, where):
    ctx, report = held_out_run(tmp_path, name)
    induced_or_skip(ctx)
    assert report.top.cause == cause and report.top.where == where
