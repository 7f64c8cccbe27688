"""Run shapes from the thirty-fourth session (held-out sets 119-122's misses and false alarms).

Each change has a trigger that fails on the code before it and a control that must not move."""

from __future__ import annotations

import math

import pytest
from helpers import diagnose_stored, held_out_run, shape_or_skip, steadygrad


def _stream_rows(bumps: tuple[int, ...], steps: int) -> list[dict]:
    """A regressor's loss easing from 1.0 with a little jitter; at each step of ``bumps`` one
    batch of a harder kind lifts it 3x for that step alone."""
    rows = []
    for t in range(steps):
        base = 0.2 + 0.8 * math.exp(-t / 60) + 0.01 * ((t * 7) % 5)
        rows.append({"loss": base * (3.0 if t in bumps else 1.0)})
    return rows


@pytest.mark.parametrize(
    ("bumps", "steps", "recurs"),
    [
        ((40, 80, 120, 160), 200, True),  # every 40 steps up to the flagged one, the last
        ((120, 160, 200), 240, True),  # one before it and one after
        ((160,), 200, False),  # once
        ((80, 160), 200, False),  # once before, no rhythm yet
        ((40, 80, 160), 200, False),  # a gap where the next multiple should have stood out
        ((40, 80, 120, 160), 240, False),  # and none after it, where one should have come
    ],
)
def test_a_spike_of_a_kind_of_batch_that_recurs_is_no_warning(tmp_path, bumps, steps, recurs):
    # Triggers: the loss stood out alike every 40 steps around the spike the detector flagged
    # at step 160 (a stream that mixes in a harder kind of batch at a fixed rate). Controls:
    # no such rhythm around it.
    rows = _stream_rows(bumps, steps)
    spike = {"loss": rows[160]["loss"], "baseline": rows[160]["loss"] / 3, "ratio": 3.0, "z": 20.0}
    name = f"{steps}-" + "-".join(map(str, bumps))
    report = diagnose_stored(tmp_path, name, rows, [("loss_spike", 160, None, spike, "warning")])
    outlier = next(d for d in report.diagnoses if d.cause == "data_outlier")
    symptom = next(d for d in report.diagnoses if d.cause == "loss_spike")
    assert outlier.first_step == 160
    if recurs:
        assert outlier.severity == symptom.severity == "info"
        assert outlier.evidence["recurs_every"] == symptom.evidence["recurs_every"] == 40
        assert report.healthy
    else:
        assert outlier.severity == symptom.severity == "warning"
        assert "recurs_every" not in outlier.evidence


@pytest.mark.parametrize(
    ("name", "period", "warned"),
    [
        ("h119_soil_moisture_control", 25, []),
        ("h120_llava_onevision15_text_mixed_stream", 60, []),
        ("h123_tram_healthy", 40, [79]),
    ],
)
def test_real_streams_with_a_recurring_harder_batch_end_healthy(tmp_path, name, period, warned):
    # Set 119's soil-moisture regressor (storm-week batches every 25 steps), set 120's
    # LLaVA-OneVision text tower (a batch of denser text every 60) and set 123's tram-ridership
    # GRU (a burst batch every 40, flagged at its second): the detector flags them once the
    # baseline is low; the report names the recurring batch at info. Live too: a
    # spike the loss made alike at the two multiples of one spacing before it is recorded at
    # info, with its spacing (the tram's second burst, with one before it, is still warned of).
    ctx, report = held_out_run(tmp_path, name)
    assert report.healthy
    found = next(d for d in report.diagnoses if d.cause == "data_outlier")
    assert found.severity == "info" and found.evidence["recurs_every"] == period
    spikes = [f for f in ctx.monitor.findings if f.kind == "loss_spike"]
    assert [f.step for f in spikes if f.severity != "info"] == warned
    assert spikes[-1].severity == "info" and spikes[-1].evidence["recurs_every"] == period


def _glitch_rows(rise: float) -> list[dict]:
    """A language model's loss easing from 5.5 to about 2.7 nats with a little noise; the
    learning rate raised 40x for three steps at 170, the loss then ``rise`` nats higher for
    a dozen steps."""
    rows = []
    for t in range(260):
        loss = 2.6 + 2.9 * math.exp(-t / 40) + 0.08 * (((t * 37) % 11) / 11 - 0.5)
        if 171 <= t <= 185:
            loss += rise * (1.0 if t <= 175 else 0.5)
        lr = 0.06 if 170 <= t < 173 else 1.5e-3
        rows.append({"loss": loss, "lr/0": lr})
    return rows


@pytest.mark.parametrize("rise", [0.8, 0.05])
def test_a_rate_glitch_that_lifted_a_loss_in_nats_is_its_jolt(tmp_path, rise):
    # Trigger: the rate glitch lifts the loss from 2.7 to 3.5 nats, a 1.3x ratio (under the 3x
    # a loss near zero must make) yet ten times the loss's spread before it. Control: a rise
    # inside the noise is no jolt.
    report = diagnose_stored(tmp_path, str(rise), _glitch_rows(rise), [])
    found = [d for d in report.diagnoses if d.cause == "loss_spike"]
    if rise > 0.5:
        assert found and found[0].first_step == 170 and found[0].severity == "warning"
    else:
        assert not found


def test_a_warm_restart_written_at_twenty_times_its_peak_is_a_loss_spike(tmp_path):
    # Set 119's GLM-4.6V text tower: the restart's rate written as a multiplier of 20 for
    # three steps; the loss rose 1.3x and took fifteen steps to come back. No detector fired.
    _, report = held_out_run(tmp_path, "h119_glm46v_text_restart_spike")
    # dated within the glitch's three steps (170 on one machine's kernels, 172 on another's)
    assert report.top.cause == "loss_spike" and 170 <= report.top.first_step <= 172


def _fast_head_rows(head_rate: float) -> list[dict]:
    """A classifier whose head's log-partition climbs from 1.5 to 14 nats from step 20 on, its
    rows collapsing more and more from step 25; the body trains at 0.05, the head at
    ``head_rate`` (its own optimizer group)."""
    rows = []
    for t in range(200):
        row = {"loss": 1.4 * math.exp(-t / 30) + 0.1, "lr/0": 0.05, "lr/1": head_rate}
        if t % 5 == 0:
            lse = 1.5 if t < 20 else min(14.0, 4.0 + 0.06 * t)
            row |= {"logit_lse_mean": lse, "softmax_collapse": 0.0 if t < 25 else 0.02 + t / 800}
        rows.append(row)
    return rows


@pytest.mark.parametrize("head_rate", [5.0, 0.05])
def test_rows_collapsing_as_a_fast_heads_logits_grow_are_the_growths(tmp_path, head_rate):
    # Trigger: the head's group trains 100x faster than the body and its logits climb with it:
    # rows collapse as they grow, and the growth, dated from where it left its start, is named
    # first. Control: one rate for the whole model: the collapse stands on its own.
    config = {"param_groups": {"lr/0": ["body.weight"], "lr/1": ["head.weight"]}}
    config["output_layer"] = "head"
    collapse = ("softmax_collapse", 100, "head", {"softmax_collapse": 0.14, "fraction": 0.1})
    report = diagnose_stored(
        tmp_path, str(head_rate), _fast_head_rows(head_rate), [(*collapse, "warning")], config
    )
    if head_rate > 1:
        assert report.top.cause == "output_logit_divergence" and report.top.first_step == 20
        collapsed = next(d for d in report.diagnoses if d.cause == "softmax_collapse")
        assert "faster than the rest" in collapsed.why
    else:
        assert report.top.cause == "softmax_collapse"


@pytest.mark.parametrize("name", ["h122_origami_head_lr", "h69_unclamped_scale_w2v_conformer_lion"])
def test_real_heads_trained_far_faster_than_their_bodies(tmp_path, name):
    # Set 122's origami classifier (its head at lr 5 beside a body at 0.05) and set 69's
    # wav2vec2-conformer: the logits grow with the head's rate, and rows collapse as they do.
    _, report = held_out_run(tmp_path, name)
    assert report.top.cause == "output_logit_divergence"


def _attention_rows(after: str) -> list[dict]:
    """A layer's largest attention logit read every 25 steps: 0.07, 0.15, 4.8, 17.7 by step 75
    (a burst out of a small start, which the early test reads as compounding); then "slowed":
    37.5 and 41.8; "compounds": 45 and 110; "ended": the run ends at step 80."""
    later = {"slowed": (37.5, 41.8), "compounds": (45.0, 110.0)}.get(after, ())
    readings = dict(zip((0, 25, 50, 75, 100, 125), (0.07, 0.15, 4.8, 17.7, *later), strict=False))
    rows = []
    for t in range(80 if after == "ended" else 150):
        row = {"loss": 3.0 + 2.0 * math.exp(-t / 20)}
        if t in readings:
            row["attn_logit_max/blk.attn"] = readings[t]
        rows.append(row)
    return rows


@pytest.mark.parametrize("after", ["slowed", "compounds", "ended"])
def test_an_early_attention_warning_whose_growth_stopped_short_is_info(tmp_path, after):
    # Trigger: the early warning at step 75 (growth that looked compounding, at 17.7) was a
    # burst of learning: the logits slowed to 1.1x a cadence and ended at 42, under the 100 of
    # the threshold. Controls: they went on compounding past it; or the run ended before a
    # cadence had passed, with nothing to tell.
    early = {"attn_logit_max": 17.7, "threshold": 100.0, "previous_reading": 50, "early": True}
    finding = ("attention_logit_growth", 75, "blk.attn", early, "warning")
    report = diagnose_stored(tmp_path, after, _attention_rows(after), [finding])
    found = next(d for d in report.diagnoses if d.cause == "attention_logit_growth")
    if after == "slowed":
        assert found.severity == "info" and found.evidence["stopped_short"] and report.healthy
    else:
        assert found.severity == "warning" and "stopped_short" not in found.evidence


def test_a_healthy_text_tower_whose_attention_logits_grew_then_settled(tmp_path):
    # Set 124's Video-LLaVA text tower under SGD momentum at 0.5: its first layer's logits
    # burst from 0.15 to 17.7 by step 75 (the early warning), then settled at 42.
    _, report = held_out_run(tmp_path, "h124_video_llava_healthy")
    steps, logits = steadygrad.load(tmp_path / "h124_video_llava_healthy").series(
        "attn_logit_max/model.layers.0.self_attn"
    )
    last, before = logits[-1], logits[steps <= steps[-1] - 25][-1]
    shape_or_skip(last < 1.3 * before, "the first layer's logits settled by the end")
    assert report.healthy


def _opening_blowup_rows(shape: str) -> list[dict]:
    """A run whose loss rose from 4.9 to 5e8 and went NaN at step 6. "thrown": the first update
    threw the weights (norm 21 -> 168) from an ordinary gradient; "grew": the weights hardly
    moved at first (14.3 -> 14.7) while the gradient grew on its own; "born": the gradient
    stood 1,000 times the weights' norm before any update."""
    loss = [4.87, 6.6, 96.2, 2262.0, 1.03e6, 5.08e8] + [math.nan] * 24
    weights = {"thrown": [21.1, 167.7, 300.0, 800.0, 2e3, 5e4], "grew": [14.3, 14.7, 16.6, 48.0]}
    weights["born"] = weights["thrown"]
    grads = {"thrown": 1.39, "grew": 96.0, "born": 21.1e3}[shape]
    rows = []
    for t, value in enumerate(loss):
        row = {"loss": value}
        if t < len(weights[shape]):
            row |= {"param_norm": weights[shape][t], "grad_norm": grads * 10.0**t}
        rows.append(row)
    return rows


@pytest.mark.parametrize("shape", ["thrown", "grew", "born"])
def test_a_run_blown_up_by_its_first_updates_before_the_detector_could_see(tmp_path, shape):
    # Trigger: the loss went NaN at step 6, too soon for the divergence detector's opening
    # window; the first update had thrown the weights 8x from an ordinary gradient: a step size
    # far past the stability limit. Controls: the weights hardly moved at first (the gradient
    # grew on its own); the gradient exploded before any update (the initialisation's doing).
    climb = (
        "loss_divergence",
        2,
        None,
        {"loss": 96.2, "best_level": 6.6, "ratio": 14.6},
        "critical",
    )
    nan = ("nonfinite", 6, None, {"loss": math.nan}, "critical")
    report = diagnose_stored(tmp_path, shape, _opening_blowup_rows(shape), [climb, nan])
    found = [d for d in report.diagnoses if d.cause == "sharpness_above_limit"]
    if shape == "thrown":
        assert report.top.cause == "sharpness_above_limit" and report.top.first_step == 0
    else:
        assert not found


def test_a_text_tower_at_a_rate_of_twelve_blows_up_in_six_steps(tmp_path):
    # Set 124's Video-LLaVA text tower under plain SGD at 12: NaN at step 6; its attention
    # logits, at their initial level at step 0, read 6e9 at step 4, after the run broke.
    _, report = held_out_run(tmp_path, "h124_video_llava_lr_above_limit")
    assert report.top.cause == "sharpness_above_limit"


@pytest.mark.parametrize(("ratio", "falls"), [(1e-6, False), (1e-3, False), (1e-6, True)])
def test_updates_too_small_to_learn_with_a_loss_that_never_fell(tmp_path, ratio, falls):
    # Trigger: every tensor moved by a millionth of its norm per step and the loss stayed where
    # it began: a rate typed in the wrong unit. Controls: ordinary steps on a flat loss (a task
    # with nothing to learn); tiny steps that still bring the loss down (a careful fine-tune).
    rows = []
    for t in range(200):
        loss = 0.6 + 0.02 * ((t * 13) % 7 - 3) / 3 - (0.3 * t / 200 if falls else 0.0)
        row = {"loss": loss}
        if t % 10 == 0:
            row |= {"update_ratio/trunk.weight": ratio, "update_ratio/head.weight": 2 * ratio}
        rows.append(row)
    report = diagnose_stored(tmp_path, f"{ratio}-{falls}", rows, [])
    found = [d for d in report.diagnoses if d.cause == "update_ratio_out_of_range"]
    if ratio < 1e-5 and not falls:
        assert found and found[0].severity == "warning" and found[0].first_step == 0
    else:
        assert not found and report.healthy


def test_a_rate_in_the_wrong_unit_is_named_though_no_detector_fired(tmp_path):
    # Set 124's subway-headway regressor under Adamax at 2e-7: updates a millionth of the
    # weights, the loss flat at 0.6 for 200 steps; no finding fired (not frozen to float32).
    _, report = held_out_run(tmp_path, "h124_subway_update_ratio")
    assert report.top.cause == "update_ratio_out_of_range"


@pytest.mark.parametrize(("grad", "act"), [(math.inf, 3e9), (math.nan, 3e9), (math.inf, 2.0)])
def test_a_recurrence_whose_first_gradient_overflowed_exploded_from_the_start(tmp_path, grad, act):
    # Trigger: a ReLU RNN with gain 2.2 over 60 steps: its output RMS 3e9 at the first step
    # from inputs of RMS 0.5, the gradient infinite at once, NaN from step 1. Controls: a NaN
    # gradient (no size to read); an infinite one with the signal at the input's scale.
    rows = [
        {
            "loss": 1.2e20,
            "grad_norm": grad,
            "param_norm": 1.3e19,
            "input_rms": 0.5,
            "act_rms/rnn": act,
            "act_rms/head": 1e10,
        }
    ] + [{"loss": math.nan, "grad_norm": math.nan, "param_norm": math.nan}] * 20
    nan = ("nonfinite", 1, "rnn", {"loss": math.nan}, "critical")
    config = {"recurrent_modules": ["rnn"], "output_layer": "head"}
    report = diagnose_stored(tmp_path, f"{grad}-{act}", rows, [nan], config)
    if math.isinf(grad) and act > 1e4:
        assert report.top.cause == "exploding_gradients" and report.top.first_step == 0
        assert report.top.where == ["rnn"] and "through time" in report.top.summary
    else:
        assert "exploding_gradients" not in report.causes()


def test_a_relu_recurrence_at_gain_two_overflows_at_its_first_step(tmp_path):
    # Set 125's river-ice model: loss 1e20 at step 0, NaN from step 1; only the NaN was found.
    _, report = held_out_run(tmp_path, "h125_river_ice_relu_gain")
    assert report.top.cause == "exploding_gradients" and report.top.where == ["rnn"]


@pytest.mark.parametrize("stays", [True, False])
def test_inputs_that_changed_scale_and_stayed_are_not_called_one_batch(tmp_path, stays):
    # Trigger: a sensor feed switched to watts at step 80 (inputs 1,700x their RMS before,
    # every batch since); the loss spiked at step 98. The report said "one batch at step 96".
    # Control: one batch at step 96 alone was that large.
    rows = []
    for t in range(140):
        big = t >= 80 if stays else t == 96
        rows.append({"loss": 8e5 if t == 98 else 0.015, "input_rms": 1700.0 if big else 1.0})
    spike = ("loss_spike", 98, None, {"loss": 8e5, "baseline": 0.015, "ratio": 5e7}, "warning")
    report = diagnose_stored(tmp_path, str(stays), rows, [spike])
    found = next(d for d in report.diagnoses if d.cause == "data_outlier")
    if stays:
        assert found.evidence["scale_changed_at"] == 80 and "changed scale" in found.summary
    else:
        assert "scale_changed_at" not in found.evidence and "one batch" in found.summary
