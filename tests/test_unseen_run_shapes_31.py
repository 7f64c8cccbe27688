"""Run shapes from the thirty-fifth session (held-out set 127's misses).

Each change has a trigger (the held-out scenario it was found on, run here with the one-line
attach: its fault is by construction) and a control that must not move."""

from __future__ import annotations

import statistics

import pytest
from helpers import diagnose_stored, held_out_run, induced_or_skip, shape_or_skip, steadygrad

from steadygrad.diagnose.detectors.transformer import ROUNDING_MARGIN


def _report(tmp_path, name):
    ctx, report = held_out_run(tmp_path, name)
    induced_or_skip(ctx)
    return report


def _of(report, cause):
    return next(d for d in report.diagnoses if d.cause == cause)


def _all(report, cause):
    return [d for d in report.diagnoses if d.cause == cause]


def test_weights_a_rate_burst_threw_are_no_runaway_head(tmp_path):
    # Trigger: a regressor's output layer grew 0.61 -> 1.65 while it learnt; three steps at 30x
    # the rate from step 80 threw it (11.5x its start by step 81) and killed its second
    # layer's ReLUs. The growth the burst made is the burst's: no runaway head (whose summary
    # said "while the loss set no new best", false here); the dead units, which stayed, are
    # the cause.
    report = _report(tmp_path, "h127_salmon_dead_relus")
    assert report.top.cause == "loss_of_plasticity"
    assert not any("set no new best" in d.summary for d in report.diagnoses)


def test_a_collapse_does_not_explain_a_nan_made_upstream_of_the_head(tmp_path):
    # Trigger: a flagger fit its data to float32's floor (rows collapsed, loss ~1e-8); from
    # step 60 raw inputs 4000x larger overflow its first layer under fp16. The NaN is made in
    # `embed` from finite inputs: a collapse (a zero gradient at the loss) makes none there.
    # The rows were collapsed before any update (a quarter of them at step 0: raw spectra gave
    # logits of 38 at the first reading, past float32's rounding margin), so the fifty-ninth
    # session no longer reads that collapse as a fit: a warning, and outranked either way.
    report = _report(tmp_path, "h127_rfi_fp16_overflow")
    assert report.top.cause == "amp_overflow"
    widest = steadygrad.load(tmp_path / "h127_rfi_fp16_overflow").series("output_logit_max")[1]
    assert widest[0] > ROUNDING_MARGIN  # the oracle: born wide
    collapse = _of(report, "softmax_collapse")
    assert collapse.severity == "warning" and "on a fit" not in collapse.summary


def test_a_collapse_in_the_head_that_broke_stays_the_cause(tmp_path):
    # Control: logits divided by a temperature near zero collapse the rows and break the run
    # in the head itself: nothing upstream made the NaN.
    report = _report(tmp_path, "h126_pacemaker_temperature_unit")
    assert report.top.cause == "softmax_collapse"


def test_attention_logits_that_held_level_long_before_a_break_do_not_explain_it(tmp_path):
    # Trigger: a tower's attention logits grew 4.6x in its first 25 steps, then held at ~400
    # for 75 steps while the loss kept improving; a scheduler resumed at 10x its rate broke
    # the run at step 101, and rows collapsed right after. The rate glitch is the cause: the
    # attention held level, and the collapse came after the burst threw the logits.
    report = _report(tmp_path, "h127_embedding_gemma2_restart_spike")
    steps, logits = steadygrad.load(tmp_path / "h127_embedding_gemma2_restart_spike").series(
        "attn_logit_max/tower.layers.1.self_attn"
    )
    level = logits[(steps >= 25) & (steps <= 100)]
    shape_or_skip(level.max() <= 1.3 * level.min(), "the logits held within 1.3x from step 25")
    # (One machine's kernels read a directional sharpness of 1.22x at step 93, at the rate
    # before the raise: a reading at the old rate says nothing of the steps the raise made.)
    assert report.top.cause == "loss_spike"
    # Where the attention detector fired (on some machines' kernels it does not), it is
    # marked as having held level, and the collapse as the burst's.
    for attention in _all(report, "attention_logit_growth"):
        assert attention.severity == "info" and attention.evidence["held_level_until"] == 100
    for collapse in _all(report, "softmax_collapse"):
        assert "the burst's updates threw the logits" in collapse.why


def test_attention_logits_that_grew_into_the_break_stay_the_cause(tmp_path):
    # Control: a GPT whose unscaled attention logits keep growing until the run breaks.
    report = _report(tmp_path, "h67_hf_openai_gpt_unscaled_attention")
    assert report.top.cause == "attention_logit_growth"
    assert report.top.severity != "info"
    assert "held_level_until" not in report.top.evidence


def test_attention_that_had_stood_as_high_before_its_warning_is_no_growth(tmp_path):
    # Trigger: a Gemma4 LM's second layer rose from 92 to ~400 in its first 25 steps, dipped
    # to 296 and came back to 374, where the detector fired; it rose past that level only when
    # a 100x rate glitch jolted the run at step 90. The glitch is the cause. A dip and a
    # recovery is no growth (the detector counts a reading as growing only above the one
    # before), so nothing about attention is said before the glitch.
    report = _report(tmp_path, "h128_hf_gemma4_unified_loss_spike")
    assert report.top.cause == "loss_spike"
    attention = [d for d in report.diagnoses if d.cause == "attention_logit_growth"]
    assert all(d.first_step >= 90 for d in attention)


def test_attention_that_grew_past_every_earlier_reading_stays_a_warning(tmp_path):
    # Control: query/key weights trained at an overridden rate grow the logits reading after
    # reading, in a run that did not break.
    report = _report(tmp_path, "h121_got_ocr2_qk_lr")
    assert report.top.cause == "attention_logit_growth" and report.top.severity != "info"


def test_a_gradient_the_recurrence_amplified_is_read_over_the_module(tmp_path):
    # Trigger: a ReLU RNN at recurrent gain 1.8 over 40 steps: its first gradient was 47x the
    # weights' norm, spread over its four tensors (none alone half the squared norm, the module
    # all of it), and the run broke at step 5.
    report = _report(tmp_path, "h128_violin_varnish_exploding")
    assert report.top.cause == "exploding_gradients" and report.top.where == ["rnn"]
    assert report.top.first_step == 0


def test_attention_logits_that_settled_at_their_level_in_the_first_steps_are_no_growth(tmp_path):
    # Trigger: a healthy Diffusion-Gemma encoder whose second layer's logits stand at 89 before
    # training and at 461 by the first reading after, then hold within 10% to the end while the
    # loss falls: the tower's own scale, settled, not growth (the detector fires on 5x its floor).
    # Its rows were already 70% one-hot before training (Gemma's unscaled q.k over normalised q
    # and k): that is no entropy collapse, which is a change, and the collapse test stays quiet.
    ctx, report = held_out_run(tmp_path, "h129_hf_dgemma_healthy")
    induced_or_skip(ctx)
    assert report.healthy
    attention = _of(report, "attention_logit_growth")
    assert attention.severity == "info"
    assert {"held_level_until", "earlier_peak"} & set(attention.evidence)
    live = [f for f in ctx.monitor.findings if f.kind == "attention_logit_growth"]
    assert not any("attn_saturated" in f.evidence for f in live)


def test_attention_logits_that_grew_over_many_readings_and_slowed_stay_a_warning(tmp_path):
    # Control: an inverted softmax scale grows the logits 0.8 -> 9.5 -> 27 -> 52 -> 62 -> 79,
    # slowing by the end: growth over the whole run, however level its last readings.
    report = _report(tmp_path, "h46_deepseek_v3_softmax_scale_inverted")
    assert report.top.cause == "attention_logit_growth" and report.top.severity != "info"


def test_a_sharpness_reading_across_a_burst_out_of_calm_updates_is_the_burst(tmp_path):
    # Trigger: a ReLU RNN at gain 1.5 trains calmly (directional sharpness readings -0.1..0.18)
    # until its recurrent gradient bursts 3,000x at step 8 and its forward overflows at 9. The
    # reading of 384 at step 8 spans that burst: no step size past 2/curvature made it.
    report = _report(tmp_path, "h129_kitesurf_exploding")
    assert report.top.cause == "exploding_gradients" and report.top.where == ["rnn"]
    assert "sharpness_above_limit" not in report.causes()


def test_a_rate_that_ramps_past_the_limit_stays_the_cause(tmp_path):
    # Control: SGD whose rate rises 400x by a geometric warm-up overshoots before it breaks.
    report = _report(tmp_path, "h129_hf_kolibri_sgd_lr_ramp")
    assert report.top.cause == "sharpness_above_limit"


def _climb_rows(end: float) -> list[dict]:
    """A loss easing from 1.0 to 0.1 by step 100, climbing 50x over steps 100-110 (a catapult),
    then easing to ``end`` by step 150 and staying there."""
    rows = []
    for t in range(200):
        if t < 100:
            loss = 1.0 - 0.009 * t
        elif t < 110:
            loss = 0.1 * 50 ** ((t - 100) / 10)
        else:
            loss = max(end, 5.0 * (end / 5.0) ** ((t - 110) / 40))
        rows.append({"loss": loss})
    return rows


@pytest.mark.parametrize(("end", "broke"), [(0.05, None), (2.0, 102)])
def test_a_climb_the_run_came_all_the_way_back_from_is_no_break(tmp_path, end, broke):
    # Trigger: the run came back below the level it climbed from, on its own, and ended there:
    # a transient (set 129's loom classifier, set 111's SGDR restart). Control: it stayed up.
    from steadygrad.diagnose.rules import RunFacts

    climb = ("loss_divergence", 102, None, {"best_level": 0.1, "best_level_step": 99}, "critical")
    diagnose_stored(tmp_path, str(end), _climb_rows(end), [climb])
    assert RunFacts(steadygrad.load(tmp_path / str(end))).broke_at == broke


def test_logits_read_during_a_climb_the_run_came_back_from_are_the_climbs(tmp_path):
    # Trigger: a classifier memorising inputs x10 climbed 48x at steps 141-146 (its gradient
    # too) and came all the way back; its log-partition, read in range at step 125, read high
    # at 144 and fell back. The collapse that grew to the end is the cause.
    report = _report(tmp_path, "h129_loom_softmax_collapse")
    steps, losses = steadygrad.load(tmp_path / "h129_loom_softmax_collapse").series("loss")
    climb, before = losses[(steps >= 141) & (steps <= 146)], losses[(steps >= 121) & (steps < 141)]
    shape_or_skip(
        climb.max() > 10 * float(statistics.median(before)), "the climb came at steps 141-146"
    )
    assert report.top.cause == "softmax_collapse"
    drift = _of(report, "output_logit_divergence")
    assert "the climb threw them" in drift.why


def test_logits_that_drift_with_no_climb_stay_the_cause(tmp_path):
    # Control: a head trained at an overridden rate drifts its logits; no climb came first.
    report = _report(tmp_path, "h122_origami_head_lr")
    assert report.top.cause == "output_logit_divergence"
