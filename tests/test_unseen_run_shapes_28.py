"""Run shapes from the thirty-second session (held-out sets 107-113's misses).

Each change has a trigger that fails on the code before it and a control that must not move."""

from __future__ import annotations

import math

import pytest
from helpers import diagnose_stored


def _warm_restart_rows(came_back: bool) -> list[dict]:
    """Cosine cycles of 100 steps from 2e-3; at step 200 a warm restart sets the rate to 0.06,
    30x the first cycles' peak, and the loss jumps from 2.8 to 8 at 201. ``came_back``: the
    loss is back at 2.7 by step 215 and ends there while the cosine carries the rate down (set
    107's Pix2Struct, set 111's SeamlessM4T); else it sits at 4.5 from there on."""
    rows = []
    for t in range(300):
        peak, start = (2e-3, t // 100 * 100) if t < 200 else (0.06, 200)
        rate = 0.5 * peak * (1 + math.cos(math.pi * (t - start) / 100))
        if t < 201:
            loss = 2.8 + 0.05 * math.sin(t)
        elif t == 201:
            loss = 8.0
        else:
            settled = 2.7 if came_back else 4.5
            loss = settled + max(0.0, 5.0 - 0.4 * (t - 201)) + 0.05 * math.sin(t)
        rows.append({"loss": loss, "lr/0": rate})
    return rows


@pytest.mark.parametrize("came_back", [True, False])
def test_a_warm_restart_the_run_trained_through_is_its_jolt(tmp_path, came_back):
    # Trigger: the loss came back on its own to where it stood before the raise, calm from
    # there, as the schedule carried the rate down: the raised rate was one the model could
    # train at (a catapult); the writers, and the fix (warm up after each restart), name the
    # spike. Control: it never came back: the step size crossed 2/sharpness.
    spike = ("loss_spike", 201, None, {"ratio": 2.9, "baseline": 2.8, "loss": 8.0}, "warning")
    report = diagnose_stored(tmp_path, str(came_back), _warm_restart_rows(came_back), [spike])
    if came_back:
        assert report.top.cause == "loss_spike"
        assert "warm restart" in report.top.summary
        assert "sharpness_above_limit" not in report.causes()
    else:
        assert report.top.cause == "sharpness_above_limit"
        assert report.top.evidence["jolted_at"] == 201


def _stepped_up_rows(after: str) -> list[dict]:
    """A decoder at 0.05 until its curriculum lowers the channel's SNR at step 60: the loss is
    0.25 from that step's batch on, with the gradient norm and the weights as before (set 112's
    channel decoder). ``after``: "flat"; "climbs" on to 0.6; "kicked": the gradient of the
    step before stood 15x its level (set 114's depth completion: a spike on a norm too noisy
    for the spike test, whose update threw the weights)."""
    rows = []
    for t in range(200):
        wobble = 0.1 * math.sin(1.7 * t)
        if t < 60:
            loss = 0.05 * (1 + wobble)
        else:
            slope = 0.002 if after == "climbs" else -0.0003
            loss = (0.25 + slope * (t - 60)) * (1 + wobble)
        grad = 3.0 if after == "kicked" and t == 59 else 0.2 * (1 + wobble)
        rows.append({"loss": loss, "grad_norm": grad, "param_norm": 30.0 + 0.01 * t})
    return rows


@pytest.mark.parametrize("after", ["flat", "climbs", "kicked"])
def test_a_loss_stepped_up_by_the_data_that_climbs_no_further_is_no_divergence(tmp_path, after):
    # Trigger: the loss stood 5x its level at one step, after an ordinary update (no gradient
    # spike, the weights moving as before), and has not climbed since: the data changed there.
    # Controls: it climbs on from the new level: a divergence, whatever started it; or the
    # update before the step was made of a gradient 15x its level: the update did it.
    climb = ("loss_divergence", 63, None, {"ratio": 5.0, "best_level": 0.05}, "warning")
    report = diagnose_stored(tmp_path, after, _stepped_up_rows(after), [climb])
    divergence = next(d for d in report.diagnoses if d.cause == "loss_divergence")
    if after == "flat":
        assert divergence.severity == "info" and "stepped up" in divergence.summary
        assert report.healthy
    else:
        assert divergence.severity == "warning"


@pytest.mark.parametrize("glitch", [True, False])
def test_a_rate_glitch_is_named_when_its_jolt_made_no_loss_spike(tmp_path, glitch):
    # Trigger: set 114's mLUKE: the rate 20x for two steps at 140, then put back; a loss near
    # zero (0.02) climbs out of its floor over four steps, which no spike test flags, and the
    # climb found after it is the glitch's consequence: the glitch itself must be named.
    # Control: the same climb with no glitch: the climb is what there is to name.
    rows = []
    for t in range(240):
        rise = 0.3 * math.exp(-abs(t - 145) / 4) if t >= 141 else 0.0
        rate = 0.2 if glitch and 140 <= t < 142 else 0.01
        rows.append({"loss": 0.02 * (1 + 0.1 * math.sin(t)) + rise, "lr/0": rate})
    climb = ("loss_divergence", 147, None, {"ratio": 5.0, "best_level": 0.02}, "warning")
    report = diagnose_stored(tmp_path, str(glitch), rows, [climb])
    if glitch:
        assert report.top.cause == "loss_spike" and report.top.first_step == 140
        assert "raised 20x at step 140 and put back at step 142" in report.top.summary
    else:
        assert report.top.cause == "loss_divergence" and not report.top.consequence_of


@pytest.mark.parametrize("came_back", [True, False])
def test_first_updates_that_broke_a_run_it_then_trained_past_are_no_step_above_the_limit(
    tmp_path, came_back
):
    # Trigger: set 112's Aria projector: its head in a group at lr 1.0 under NAdam (1000x the
    # rest). The loss sat 11-19x where it started for the first ten steps, the head's logits
    # drifted (first read at step 11, the reading before at 0), and the run then trained below
    # where it started (0.009): the rates were ones the model could train at, and the head's
    # logits are what broke. Control: the loss never came back: a step size far above the
    # limit.
    rows = []
    for t in range(200):
        if t == 0:
            loss = 2.3
        elif t < 10 or not came_back:
            loss = 30.0 + math.sin(t)
        else:
            loss = 10.0 * math.exp(-(t - 10) / 15) + 0.01
        rows.append({"loss": loss, "lr/0": 1e-3, "lr/1": 1.0})
    broke = ("loss_divergence", 1, None, {"ratio": 13.0, "best_level": 2.3}, "critical")
    broke[3]["broke_at_once"] = True
    logits = ("output_logit_divergence", 11, "head", {"previous_reading": 0}, "warning")
    report = diagnose_stored(tmp_path, str(came_back), rows, [broke, logits])
    sharpness = next(d for d in report.diagnoses if d.cause == "sharpness_above_limit")
    if came_back:
        assert report.top.cause == "output_logit_divergence"
        assert "came back on its own" in sharpness.consequence_of
        assert "never came back" not in sharpness.summary
    else:
        assert report.top is sharpness and "never came back" in sharpness.summary


@pytest.mark.parametrize("rise", [14.0, 7.0])
def test_logits_that_grew_with_their_heads_runaway_rate_are_named_first(tmp_path, rise):
    # Trigger: set 114's ERNIE text tower (and set 103's Hyena, set 107's M2M-100): the head in
    # a group at 33x the body's rate under Adam; the loss fell (4.8 to 0.05), so the output-logit
    # detector read the log-partition's rise (4.9 to 19) as earned confidence, and only the
    # head's rate was named. Logits that rise 14 nats with their head's rate grew with it: the
    # drift is named first, in the head, its rate just below. Control: a rise of 7 nats, what
    # a head at a high rate on purpose (a new head on a pretrained body) shows as it learns.
    rows = []
    for t in range(240):
        row = {"loss": 4.8 * math.exp(-t / 30) + 0.05, "lr/0": 3e-3, "lr/1": 0.1}
        if t % 25 == 0:
            row["logit_lse_mean"] = 4.9 + rise * (1 - math.exp(-t / 60))
        rows.append(row)
    config = {
        "optimizer_family": "adam",
        "output_layer": "lm_head",
        "param_groups": {"lr/0": ["body.weight"], "lr/1": ["lm_head.weight"]},
    }
    report = diagnose_stored(tmp_path, str(rise), rows, [], config=config)
    causes = report.causes()
    if rise > 10:
        assert report.top.cause == "output_logit_divergence" and report.top.where == ["lm_head"]
        assert "grew with its learning rate" in report.top.summary
        assert causes.index("update_ratio_out_of_range") == 1
    else:
        assert report.top.cause == "update_ratio_out_of_range"
        assert "output_logit_divergence" not in causes


@pytest.mark.parametrize("family", ["sgd", "adam"])
def test_a_run_that_trained_then_blew_up_under_sgd_stepped_past_the_limit(tmp_path, family):
    # Trigger: set 114's diarisation embedder, SGD at lr 1.0: the loss fell from 2.1 to 0.78 in
    # ten steps, then the gradient norm grew at every step (2.4, 7.5, 14, 130) into the break,
    # NaN at step 19. The update's own direction never read an overshoot (0.3-0.87 of the
    # limit): the sharpest direction grew from a small share of the gradient (the writer's
    # power iteration saw 2/lr passed within 8 steps). Only the climb was named. Control: the
    # same shape under Adam, whose step the gradient does not scale.
    losses = [2.07, 2.03, 2.02, 1.94, 1.56, 1.61, 1.84, 1.59, 1.28, 1.08, 0.78, 2.5, 3.1, 106.0]
    grads = [0.26, 0.28, 0.42, 0.67, 0.77, 1.45, 1.86, 1.37, 1.41, 1.13, 2.43, 7.5, 14.4, 130.0]
    rows = [{"loss": x, "grad_norm": g, "lr/0": 1.0} for x, g in zip(losses, grads, strict=True)]
    rows += [{"loss": math.nan, "grad_norm": math.nan, "lr/0": 1.0} for _ in range(6)]
    climb = ("loss_divergence", 13, None, {"ratio": 82.0, "best_level": 1.28}, "critical")
    nan = ("nonfinite", 14, None, {}, "critical")
    config = {"optimizer_family": family}
    report = diagnose_stored(tmp_path, family, rows, [climb, nan], config=config)
    sharpness = [d for d in report.diagnoses if d.cause == "sharpness_above_limit"]
    if family == "sgd":
        assert report.top is sharpness[0] and report.top.first_step == 10
        assert "overshooting further" in report.top.summary
    else:
        assert not sharpness


@pytest.mark.parametrize("felt_after", [7, 30])
def test_a_gradient_spike_the_loss_felt_a_few_steps_later_is_the_cause(tmp_path, felt_after):
    # Trigger: set 115's galaxy CNN, one step's loss summed instead of averaged (a 32x
    # gradient) under Nesterov momentum: the loss at the next step stayed in its band, so the
    # spike was judged harmless, and the loss spiked 7 steps later, as the momentum carried the
    # kick: the spike was named only as a loss spike. Control: a loss spike 30 steps later is
    # not that spike's.
    rows = [{"loss": 1.0 + 0.02 * math.sin(t), "grad_norm": 0.3} for t in range(200)]
    spike = ("grad_norm_spike", 90, None, {"grad_norm": 9.6, "ratio": 32.0}, "info")
    jump = ("loss_spike", 90 + felt_after, None, {"ratio": 1.97, "baseline": 1.0}, "warning")
    report = diagnose_stored(tmp_path, str(felt_after), rows, [spike, jump])
    if felt_after <= 10:
        assert report.top.cause == "gradient_spike" and report.top.severity == "warning"
        assert f"the loss spiked {felt_after} step(s) after it" in report.top.summary
    else:
        assert report.top.cause == "loss_spike"


@pytest.mark.parametrize("came_back", [True, False])
def test_what_a_warm_restarts_jolt_set_off_is_its_own(tmp_path, came_back):
    # Trigger: set 116's demand forecaster: a warm restart at 12x; in its jolt the steps read
    # an overshoot (3.3x the limit), the loss climbed 6x, and most units of a layer died for
    # good; the loss then came back to its level before the restart and ended there as the
    # cosine carried the rate down. The overshoot and the climb are the restart's jolt; the
    # dead units are what it left (98% of body.0, for good: the loss is back, the layer's
    # capacity is not; session 48 named them, as set 312's writer did the same shape, where
    # set 116's writer had called the whole a loss spike). Control: the loss never came back:
    # the step past the limit stands.
    rows = _warm_restart_rows(came_back)
    for t, row in enumerate(rows):
        if t % 12 == 0 or 200 <= t <= 210:
            row["dead_units/body.0"] = 0.08 if t < 203 else 0.98
    findings = [
        ("loss_spike", 201, None, {"ratio": 2.9, "baseline": 2.8, "loss": 8.0}, "warning"),
        ("unstable_steps", 203, None, {"median_recent": 3.3}, "warning"),
        ("loss_of_plasticity", 203, "body.0", {"reason": "dead_units"}, "warning"),
        ("loss_divergence", 204, None, {"ratio": 2.5, "best_level": 2.8}, "critical"),
    ]
    report = diagnose_stored(tmp_path, str(came_back), rows, findings)
    if came_back:
        assert report.top.cause == "loss_of_plasticity" and "stayed dead" in report.top.summary
        assert report.top.set_off_by == ("sharpness_above_limit",)
        for cause in ("sharpness_above_limit", "loss_divergence"):
            judged = next(d for d in report.diagnoses if d.cause == cause)
            assert "raised 4x or more at a stroke at step 200" in judged.consequence_of
    else:
        assert report.top.cause in ("sharpness_above_limit", "loss_of_plasticity")
        sharpness = next(d for d in report.diagnoses if d.cause == "sharpness_above_limit")
        assert not sharpness.consequence_of


@pytest.mark.parametrize("got_over_it", [True, False])
def test_a_break_the_run_got_over_is_not_where_it_broke(tmp_path, got_over_it):
    # Trigger: set 116's handwriting RNN: a gradient spike and an overshoot broke it at step 29
    # (loss 0.68 -> 2.5); it came back to a new best (0.62 by step 49), then broke for good at
    # step 83 with its recurrent gradient growing (since step 17, found at 86). The break that
    # ended the run is the second: the first was over, and the growth may have come before the
    # second. Control: the loss never came back below 0.68 between the two.
    def loss(t):
        if t < 24:
            return 2.9 * math.exp(-t / 15) + 0.6
        if t < 29:
            return 0.68
        if t < 49:
            return 2.5 - (2.5 - (0.55 if got_over_it else 0.9)) * (t - 29) / 20
        if t < 83:
            return 0.55 if got_over_it else 0.9
        return 0.7 * 1.1 ** (t - 83)

    rows = []
    for t in range(150):
        row = {"loss": loss(t) * (1 + 0.01 * math.sin(t)), "lr/0": 0.05}
        row["directional_sharpness_ratio"] = 1.96 if 26 <= t <= 29 else 0.6
        rows.append(row)
    findings = [
        ("grad_norm_spike", 25, None, {"ratio": 6.0}, "warning"),
        ("loss_divergence", 29, None, {"ratio": 4.1, "best_level_step": 23}, "critical"),
        ("loss_divergence", 83, None, {"ratio": 8.0, "best_level_step": 60}, "critical"),
        ("gradient_growth", 86, "rnn.weight_hh_l0", {"started_at_step": 17}, "warning"),
    ]
    config = {"recurrent_modules": ["rnn"], "optimizer_family": "momentum"}
    report = diagnose_stored(tmp_path, str(got_over_it), rows, findings, config=config)
    if got_over_it:
        assert report.top.cause == "exploding_gradients"
    else:
        assert report.top.cause == "sharpness_above_limit" and report.top.first_step <= 29
