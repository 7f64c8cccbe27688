"""Run shapes from the forty-sixth session.

Each change has a trigger (a held-out scenario it was found on, run here with the one-line
attach: its fault is by construction) and a control that must not move."""

from __future__ import annotations

import math

import pytest
from helpers import diagnose_stored, held_out_run, induced_or_skip, steadygrad


def test_targets_past_one_run_a_binary_heads_logits_off(tmp_path):
    # Trigger: set 210's multi-label hatch tagger, BCE with logits on targets written
    # y * (1 + 0.1): positives at 1.1, for which the loss has no minimum, so the head's logits
    # grow without end and the loss goes below zero. Read as two-class softmaxes, the logits'
    # log-partition climbs, pushed by targets the loss has no minimum on (a sixth of them,
    # the positives, at 1.1), read from the first step; no other finding.
    ctx, report = held_out_run(tmp_path, "h210_nymph_hatch_smoothing_above_one")
    induced_or_skip(ctx)
    top = report.top
    assert top.cause == "output_logit_divergence"
    assert top.where[0] == "head"
    assert top.evidence["targets_outside_from"] == top.first_step == 0
    assert 0 < top.evidence["output_targets_outside"] < 1
    assert not top.consequence_of
    found = next(f for f in ctx.monitor.findings if f.kind == "output_logit_divergence")
    assert found.step <= 75  # three readings of the climb, the push proven at each


@pytest.mark.parametrize(
    "name", ["h192_topiary_multilabel_control", "h166_rock_pool_pos_weight_control"]
)
def test_healthy_binary_heads_stay_quiet(tmp_path, name):
    # Controls: a multi-label tagger and a pos_weight-balanced binary scorer, both trained to
    # confidence under BCE with logits, now read by the output signal: no warning at all.
    ctx, report = held_out_run(tmp_path, name)
    assert len(steadygrad.load(tmp_path / name).series("logit_lse_mean")[0])  # logits read
    assert report.top is None
    assert not [f for f in ctx.monitor.findings if f.severity != "info"]


@pytest.mark.parametrize("collapse_read", [False, True])
def test_a_loss_below_zero_explains_a_drift_only_where_no_class_targets_were_read(
    tmp_path, collapse_read
):
    # The logits' log-partition climbs from 0.7 to 6 while the loss falls through zero at step
    # 40: no cross-entropy against targets in [0, 1] goes there. Where the logits came from a
    # cross-entropy with class targets (softmax collapse read), a negative total is another
    # term's (a learnt log-variance), and tells nothing of the logits.
    rows = []
    for t in range(120):
        row = {"loss": 0.705 - t * 0.0175, "lr/0": 1e-3}
        if t % 10 == 0:
            row["logit_lse_mean"] = 0.7 + 0.05 * t
            if collapse_read:
                row["softmax_collapse"] = 0.0
        rows.append(row)
    drift = {"logit_lse_mean": 6.0, "initial": 0.7, "drift": 5.3, "lse_limit": 20.0}
    findings = [("output_logit_divergence", 100, "head", drift, "warning")]
    report = diagnose_stored(tmp_path, str(collapse_read), rows, findings, {"optimizer": "AdamW"})
    found = next(d for d in report.diagnoses if d.cause == "output_logit_divergence")
    if collapse_read:
        assert "negative_loss_from" not in found.evidence
    else:
        assert found.evidence["negative_loss_from"] == 41
        assert "went below zero from step 41" in found.summary


def test_a_drift_thrown_by_a_spike_that_adams_momentum_carried_is_the_spikes(tmp_path):
    # Trigger: set 80's SSD-style detector (Adam), whose loss goes unscaled for one step at
    # 160: a gradient 10^5x its usual size. Its multi-label logits, climbing 0.004 nats a step
    # with the confidence the loss earned, climb a hundred times faster for the steps Adam's
    # momentum carries the spike on, and cross the output-logit bar at step 163, three steps
    # after it: the spike's throw, and the poisoned second moment the cause.
    ctx, report = held_out_run(tmp_path, "h80_ssd_unscaled_loss_once_adam")
    induced_or_skip(ctx)
    assert report.top.cause == "adam_second_moment_poisoned"
    drift = [d for d in report.diagnoses if d.cause == "output_logit_divergence"]
    assert all("gradient spike at step 160" in (d.consequence_of or "") for d in drift)


def _thrown_rows(after_pace):
    """The log-partition read every 25 steps, climbing 0.004 a step, a gradient spike at 160,
    then read each step from 161 at ``after_pace`` a step."""
    rows = []
    for t in range(170):
        row = {"loss": 0.05, "lr/0": 1e-3}
        if t % 25 == 0 and t <= 150:
            row["logit_lse_mean"] = 0.7 + 0.004 * t
        if t > 160:
            row["logit_lse_mean"] = 0.7 + 0.004 * 150 + after_pace * (t - 150)
        rows.append(row)
    return rows


@pytest.mark.parametrize(
    ("momentum", "after_pace", "thrown"),
    [(0.9, 0.1, True), (None, 0.1, False), (0.9, 0.01, False)],
)
def test_a_climb_is_a_spikes_throw_only_within_its_momentum_and_only_if_it_quickened(
    tmp_path, momentum, after_pace, thrown
):
    # The bar is crossed at step 163, three steps after a spike: under momentum 0.9 the spike
    # still moves the weights (about 10 steps); with none, its one update was long taken. And
    # a climb going on at the pace it had before the spike (0.01 against 0.004 a step, less
    # than QUICKENED times) is the drift's own.
    spike = {"grad_norm": 5e4, "baseline": 0.5, "ratio": 1e5}
    drift = {"logit_lse_mean": 2.0, "initial": 0.7, "previous_reading": 162}
    findings = [
        ("grad_norm_spike", 160, None, spike, "warning"),
        ("output_logit_divergence", 163, "cls", {"first": drift, **drift}, "warning"),
    ]
    config = {"optimizer": "Adam", "first_moment_decay": momentum}
    name = f"{momentum}-{after_pace}"
    report = diagnose_stored(tmp_path, name, _thrown_rows(after_pace), findings, config)
    found = next(d for d in report.diagnoses if d.cause == "output_logit_divergence")
    assert ("gradient spike at step 160" in (found.consequence_of or "")) is thrown


def test_a_gradient_a_loss_weight_multiplied_stands_out_per_unit_of_loss(tmp_path):
    # Trigger: set 215's hay-drying regressor, whose stage weight of 40 (a percentage) is
    # applied raw at step 100: the gradient is 44x its recent median while the loss recorded
    # is ordinary. Its gradient norm swings tenfold from batch to batch, so the
    # norm alone is 4.6 robust z-scores out; per unit of loss it is 12.8.
    ctx, report = held_out_run(tmp_path, "h215_hayrick_stage_weight_pct")
    induced_or_skip(ctx)
    assert report.top.cause == "gradient_spike"
    spike = next(f for f in ctx.monitor.findings if f.kind == "grad_norm_spike")
    assert spike.step == 100
    assert spike.evidence["z"] < 6 < 8 < spike.evidence["per_loss_z"]


def _heavy_tailed(spiked_at=None, gradient_factor=1.0, loss_factor=1.0, seed=0):
    """A classifier's records: batch difficulty spread tenfold (log-normal), the gradient
    growing with the loss about as fast as it (a cross-entropy's), with at ``spiked_at`` the
    gradient and the loss multiplied by the factors given."""
    import random

    from steadygrad.core import Record
    from steadygrad.diagnose.detectors.training import GradNormSpikeDetector

    rng = random.Random(seed)
    det, found = GradNormSpikeDetector(), []
    for t in range(140):
        hard = math.exp(rng.gauss(0, 1.0))
        loss, grad = 0.01 * hard, 0.1 * hard**0.9 * math.exp(rng.gauss(0, 0.15))
        if t == spiked_at:
            loss, grad = loss * loss_factor, grad * gradient_factor
        found += det.update(Record(t, {"loss": loss, "grad_norm": grad}))
    return found


def test_per_unit_of_loss_a_multiplied_gradient_is_found_and_a_hard_batch_is_not():
    # The same stream three ways, over five draws: as it is, with a gradient multiplied 40x at
    # step 100 (the loss as usual: a loss weight typed wrong), and with a batch 400x harder
    # there (its loss 400x, its gradient 220x). The multiplied gradient is found at step 100,
    # by the per-loss test wherever the norm's own spread hides it (under 6 z-scores, in most
    # draws); the hard batch is never found per unit of loss.
    def per_loss(found):
        return [f.step for f in found if "per_loss_z" in f.evidence]

    hidden = 0
    for seed in range(5):
        assert per_loss(_heavy_tailed(seed=seed)) == []
        hard = _heavy_tailed(100, loss_factor=400.0, gradient_factor=400.0**0.9, seed=seed)
        assert per_loss(hard) == []
        (spike,) = _heavy_tailed(100, gradient_factor=40.0, seed=seed)
        assert spike.step == 100
        assert ("per_loss_z" in spike.evidence) is (spike.evidence["z"] <= 6)
        hidden += spike.evidence["z"] <= 6
    assert hidden >= 3


def test_a_gradient_scaled_for_one_step_that_broke_the_run_is_a_spike(tmp_path):
    # Trigger: set 220's toe-wrestling classifier (SGD with momentum), whose loss-weight table
    # is read one entry ahead at step 150: the gradient is 64x its usual size for that step,
    # the loss as usual, and its update throws the run into a climb it breaks on. Per unit of
    # loss the gradient is back to its usual level at the next step (it is large there only
    # because the loss is): scaled once, not a step size raised for good.
    ctx, report = held_out_run(tmp_path, "h220_toe_wrestling_loss_weight_index")
    induced_or_skip(ctx)
    assert report.top.cause == "gradient_spike"
    assert report.top.first_step == 150
    sharp = [d for d in report.diagnoses if d.cause == "sharpness_above_limit"]
    assert not [d for d in sharp if "gradient_scaled_at" in d.evidence]


@pytest.mark.parametrize(("momentum", "carried"), [(0.9, True), (None, False)])
def test_a_spike_the_loss_climbed_from_within_the_momentums_reach_was_felt(
    tmp_path, momentum, carried
):
    # A gradient 30x its level at step 110, the loss at the next step inside its band; the
    # loss leaves its level from there, the climb found at step 123. Under momentum 0.9 the
    # spike's update goes on for about 10 steps after it, and a climb is confirmed up to 10
    # steps later: the climb is its doing (a warning); with no momentum its one update was
    # 13 steps before: no more than a spike (info).
    rows = [
        {"loss": 0.05 if t <= 110 else 0.05 * 1.15 ** (t - 110), "lr/0": 0.01} for t in range(130)
    ]
    spike = {"grad_norm": 5.6, "baseline": 0.19, "ratio": 30.0, "loss_after": 0.06}
    climb = {"loss_median": 0.13, "best_level": 0.034, "best_level_step": 110, "ratio": 3.8}
    findings = [
        ("grad_norm_spike", 110, None, spike, "info"),
        ("loss_divergence", 123, None, climb, "warning"),
    ]
    config = {"optimizer": "SGD", "first_moment_decay": momentum}
    report = diagnose_stored(tmp_path, str(momentum), rows, findings, config)
    spiked = next(d for d in report.diagnoses if d.cause == "gradient_spike")
    assert (spiked.severity == "warning") is carried
    assert ("loss_climbed_at" in spiked.evidence) is carried


def test_a_noisy_streams_hard_batch_then_a_slightly_hard_one_is_no_warning(tmp_path):
    # Control turned trigger: set 230's Adadelta regressor on heavy-tailed label noise (Huber,
    # clipping). One batch's loss is 3.1x its baseline with an ordinary gradient; the next
    # batch's is 1.5x, just above the worst of the 20 before, but more than halfway back down:
    # a hard batch, info; the run is healthy.
    ctx, report = held_out_run(tmp_path, "h230_crepuscular_ray_adadelta_control")
    assert not [f for f in ctx.monitor.findings if f.severity != "info"]
    assert report.top is None or report.top.severity == "info"


@pytest.mark.parametrize(("producer", "explains"), [("normalize", False), ("head", True)])
def test_a_logit_drift_explains_no_nan_another_module_made_from_finite_inputs(
    tmp_path, producer, explains
):
    # Set 62's shape: an OWL-ViT detector's BCE logits drift from step 15, and at step 70 a
    # flat camera frame makes 0/0 in the standardiser in front of it (replayed with the step's
    # own weights: made at once from finite inputs). A drift's harm is in the head's logits
    # and the loss; it explains a NaN the head itself made, not the standardiser's.
    rows = [{"loss": 0.7 if t < 70 else math.nan, "lr/0": 1e-3} for t in range(71)]
    drift = {"logit_lse_mean": 39.0, "initial": 12.0, "drift": 27.0, "previous_reading": 0}
    origin = {"module": producer, "output_norm": math.nan, "replayed": True}
    nan = {"loss": math.nan, "nonfinite_params": 100.0, "forward_origin": origin}
    findings = [
        ("output_logit_divergence", 15, "head", drift, "warning"),
        ("nonfinite", 70, producer, nan, "critical"),
    ]
    report = diagnose_stored(tmp_path, producer, rows, findings, {"optimizer": "Adam"})
    drifted = next(d for d in report.diagnoses if d.cause == "output_logit_divergence")
    assert ("does not explain the non-finite value" in drifted.why) is not explains
    assert (report.top.cause == "output_logit_divergence") is explains
