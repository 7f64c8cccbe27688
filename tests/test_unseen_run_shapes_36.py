"""Run shapes from the fortieth session.

Each change has a trigger (a held-out scenario it was found on, run here with the one-line
attach: its fault is by construction) and a control that must not move."""

from __future__ import annotations

from helpers import diagnose_stored, held_out_run, induced_or_skip


def test_attention_saturated_at_the_runs_last_two_readings_is_named(tmp_path):
    # Trigger: set 149's SDPA ported with scale=1.0 instead of 1/sqrt(d): the largest logit
    # 6.6 -> 99, its rows one-hot 0 -> 61%, one-hot at half of them or more at the last two
    # readings only (the run ended before a third): said healthy.
    ctx, report = held_out_run(tmp_path, "h149_uilleann_regulator_sdpa_scale")
    induced_or_skip(ctx)
    assert report.top.cause == "attention_logit_growth" and report.top.where == ["attn"]


def test_a_transformer_with_its_softmax_scaled_right_is_not_warned_of(tmp_path):
    # Control: set 149's Morse keying transformer (nn.MultiheadAttention, warm-up + cosine,
    # clipping, label smoothing): attention it learns is no collapse.
    ctx, report = held_out_run(tmp_path, "h149_morse_keying_control")
    induced_or_skip(ctx)
    assert report.healthy
    assert not any(f.kind == "attention_logit_growth" for f in ctx.monitor.findings)


def _warm_up_rows(cap: int | None, climb: int = 75) -> list[dict]:
    """Plain SGD with LambdaLR(lambda s: s / 10) from a rate of 0 at step 0, ``cap``ped at
    that step or never (set 149's potter's wheel); the loss falls to 0.1, then climbs from
    step ``climb``."""
    rows = []
    for t in range(climb + 25):
        lr = 0.01 * (t if cap is None else min(t, cap))
        loss = 1.0 * 0.95**t + 0.1 if t < climb else 0.1 * 1.2 ** (t - climb + 1)
        rows.append({"loss": loss, "lr/0": lr})
    return rows


def _climb_findings(climb: int) -> list[tuple]:
    """Updates too large for the head's weight five steps before the loss climbs, at ``climb``."""
    return [
        (
            "update_ratio_out_of_range",
            climb - 5,
            "out.weight",
            {"direction": "too_large"},
            "warning",
        ),
        ("loss_divergence", climb, None, {"ratio": 2.1}, "warning"),
        ("loss_divergence", climb + 18, None, {"ratio": 8.1}, "critical"),
    ]


def test_a_warm_up_from_a_rate_of_0_that_never_stopped_is_the_step_size(tmp_path):
    # Trigger: the rate rose from 0 (the scheduler's factor at step 0) and the rule wanted a
    # positive first rate to rise from: the update ratio that crossed its bound on the way
    # was named first. A rate of 0 is no level: the rise counts from the first positive one.
    report = diagnose_stored(tmp_path, "never", _warm_up_rows(None), _climb_findings(75))
    assert report.top.cause == "sharpness_above_limit" and report.top.first_step == 0
    assert "still rising" in report.top.summary


def test_a_warm_up_from_0_over_long_before_the_climb_is_not_to_blame(tmp_path):
    # Control: the same warm-up capped at step 10, the loss climbing at step 175: no rise of
    # the rate in the 100 steps before it; the large updates are named as before.
    report = diagnose_stored(tmp_path, "capped", _warm_up_rows(10, 175), _climb_findings(175))
    assert report.top.cause == "update_ratio_out_of_range"
    assert not any("still rising" in d.summary for d in report.diagnoses)


def test_logits_grown_by_an_annealed_temperature_are_its_softmax_collapse(tmp_path):
    # Trigger: set 151's ski-wax transformer divides its logits by T = 0.96**step (meant
    # 0.996**step): the logits grow 60x by step 100 (named output-logit divergence there) and
    # the softmax collapses at step 125. The temperature made them large: the collapse first.
    ctx, report = held_out_run(tmp_path, "h151_ski_wax_temperature_decay_typo")
    induced_or_skip(ctx)
    assert report.top.cause == "softmax_collapse" and report.top.where == ["head"]
    divergence = next(d for d in report.diagnoses if d.cause == "output_logit_divergence")
    assert "plain number" in divergence.why


def test_logits_a_layer_grew_itself_are_their_divergence(tmp_path):
    # Control: set 151's katydid classifier (an energy margin missing its hinge): the head's
    # own output grows, no number scales it: output-logit divergence, as before.
    ctx, report = held_out_run(tmp_path, "h151_katydid_energy_margin_no_hinge")
    induced_or_skip(ctx)
    assert report.top.cause == "output_logit_divergence"


def _tempered_rows(scales: bool) -> list[dict]:
    """Logits read every 25 steps, their largest 5 * 1.04**t; with ``scales``, the number
    they were multiplied by, 1.04**t (a temperature 0.96**t); without, a constant 2."""
    rows = []
    for t in range(200):
        row = {"loss": 1.0}
        if t % 25 == 0:
            top = 5 * 1.04**t
            row |= {"output_logit_max": top, "logit_lse_mean": top - 1}
            row |= {
                "output_scale": 1.04**t if scales else 2.0,
                "softmax_collapse": 0.3 * (t >= 125),
            }
        rows.append(row)
    return rows


def test_the_number_that_scales_the_logits_names_whose_growth_it_is(tmp_path):
    # By hand: the drift found at step 100, the collapse at 125. With the number grown 50x by
    # step 100 (as much as the logits), the drift is the temperature's, and the collapse comes
    # first; with a constant number the logits grew on their own: the drift, first.
    drift = ("output_logit_divergence", 100, "head", {"drift": 40.0}, "warning")
    collapse = ("softmax_collapse", 125, "head", {"softmax_collapse": 0.3}, "warning")
    for scales, first in ((True, "softmax_collapse"), (False, "output_logit_divergence")):
        report = diagnose_stored(tmp_path, str(scales), _tempered_rows(scales), [drift, collapse])
        assert report.top.cause == first
