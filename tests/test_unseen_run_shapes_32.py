"""Run shapes from the thirty-sixth session (held-out set 131's misses).

Each change has a trigger (the held-out scenario it was found on, run here with the one-line
attach: its fault is by construction) and a control that must not move."""

from __future__ import annotations

import math

import torch
from helpers import diagnose_stored, held_out_run, induced_or_skip, steadygrad


def test_activations_amplified_layer_after_layer_name_the_initialisation(tmp_path):
    # Trigger: eight ReLU convolutions initialised at 2.2x the He scale. At step 0 each
    # layer's output RMS is about 2x the one before (1.6, 3.3, 7.2, 14, 27, 62, 163, 239 on
    # an input of RMS 0.54) and the gradient is 19x the norm of all the weights; the first
    # SGD step throws the run (loss 27 -> 7,295 -> NaN). No layer reaches the 1e4x of a
    # single-layer test: the chain is the evidence, and it names where it starts.
    ctx, report = held_out_run(tmp_path, "h131_typewriter_jam_hot_init")
    induced_or_skip(ctx)
    top = report.top
    assert top.cause == "exploding_gradients" and top.first_step == 0
    assert "convs.0" in top.where
    assert "each of convs.0 .. convs.7 (8 layers) at least 1.2x the output before it" in (
        top.summary
    )


def test_the_same_layers_at_the_he_scale_explode_nothing(tmp_path):
    # Control: the same eight convolutions at the He scale keep the signal's RMS through the
    # layers; the same SGD run trains, and nothing is said to explode from the start.
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from scenarios.cases_heldout131 import KeyJam, _keystroke_batches
    from scenarios.common import Context, fit, seeded

    torch.manual_seed(0)
    ctx = Context("default", tmp_path / "he")
    model = KeyJam(depth=8, gain=math.sqrt(2))
    fit(ctx, model, torch.optim.SGD(model.parameters(), lr=0.01), _keystroke_batches(seeded(7)), 40)
    ctx.monitor.close()
    assert all(math.isfinite(v) for v in ctx.losses)
    report = steadygrad.diagnose(tmp_path / "he")
    assert not any(d.cause == "exploding_gradients" for d in report.diagnoses)


def test_a_chain_is_layers_in_a_row_each_amplifying_the_one_before():
    # Hand-computed: the chain must be CHAIN (5) layers in a row, each >= 1.2x the output
    # before it (the gradient at 10x the weights' norm is asked of the run beside it).
    from steadygrad.diagnose.rules import _amplified_layer_by_layer

    grow = [(2.0**i, f"net.{i}") for i in range(6)]  # 1 .. 32: x2 a layer
    assert _amplified_layer_by_layer(grow) == grow
    # read in the model's order (net.10 after net.9), not the names' string order
    many = [(1.25**i, f"net.{i}") for i in range(17)]  # 1.25^16 = 35.5
    assert [m for _, m in _amplified_layer_by_layer(many)] == [f"net.{i}" for i in range(17)]
    # one layer at 1.1x breaks the chain into two of four
    broken = [(v, f"net.{i}") for i, v in enumerate([5, 10, 20, 40, 44, 88, 176, 352])]
    assert _amplified_layer_by_layer(broken) == []
    # five layers at 1.25x (2.4x in all) are a chain; four are not; one layer large by design
    # (a temperature) is none
    slow = [(1.25**i, f"net.{i}") for i in range(5)]
    assert _amplified_layer_by_layer(slow) == slow and _amplified_layer_by_layer(slow[:4]) == []
    spike = [(1.0, "net.0"), (1.1, "net.1"), (900.0, "net.2"), (1.0, "net.3"), (1.2, "net.4")]
    assert _amplified_layer_by_layer(spike) == []
    assert _amplified_layer_by_layer([]) == []  # no layer with weights recorded


def _report(tmp_path, name):
    ctx, report = held_out_run(tmp_path, name)
    induced_or_skip(ctx)
    return report


def test_steps_past_the_limit_from_a_group_set_far_above_the_rest_are_that_groups(tmp_path):
    # Trigger: a PP-OCRv5 recogniser whose head group runs AdamW at 0.3, 1,000x the body's
    # 3e-4 (its weights moved 4.6x their norm per update); the loss jumped 28x at step 1 and
    # stayed. "The first updates broke the run" was named first, with no place; those steps
    # were the head group's, so the rate set apart (and the head's logits it drives) come
    # first, and the step-size finding is their consequence.
    report = _report(tmp_path, "h132_ppocr_v5_mobile_head_lr_typo")
    assert report.top.where == ["head"]
    assert report.top.cause in ("output_logit_divergence", "update_ratio_out_of_range")
    sharpness = next(d for d in report.diagnoses if d.cause == "sharpness_above_limit")
    assert "its steps are the ones past the limit" in sharpness.why


def test_an_overshoot_the_run_learnt_on_from_did_not_break_it(tmp_path):
    # Trigger: a linear recurrence trained on short traces read one overshoot at step 12
    # (29x the limit, between readings of -4.8 and 1.4), then went on to its best sustained
    # loss at step 19; from step 20 the traces are 4x longer and the gradient through time
    # explodes (1.7e7). The overshoot it survived is not what broke it: the recurrence is.
    report = _report(tmp_path, "h132_glassblowing_furnace_long_traces")
    assert report.top.cause == "exploding_gradients" and report.top.where == ["cell"]


def test_a_run_broken_by_its_rate_and_recovered_later_keeps_its_overshoot(tmp_path):
    # Control: SGD at a rate far above the limit throws the loss to 10^2-10^4 within eight
    # steps; the run then settles (BatchNorm, weights rescaled) and reaches its best loss
    # long after the break. The overshoot came before the break: still the cause.
    # (The collection's MLP at the same rate, which sits back at its first loss with its units
    # dead instead, is test_unseen_run_shapes_39's.)
    ctx, report = held_out_run(tmp_path, "lr_fast_cnn_momentum")  # the collection's: no checks
    assert max(ctx.losses[:10]) > 100 * ctx.losses[0]  # thrown, as written
    assert report.top.cause == "sharpness_above_limit"


def test_a_spike_on_every_tensor_that_stopped_one_of_them_poisoned_its_moment(tmp_path):
    # Trigger: one reading logged in micro-degrees gives every tensor a gradient spike at
    # step 25 under Adam; the head's bias, whose own gradient the spike dwarfs, then moves at
    # 8% of its pace before (its ratio falls 0.002 -> 9e-6), while the other tensors it hit
    # keep theirs (55-160%). With no tensor missed there was no control, and the poisoning
    # went unnamed; the other tensors hit are the control.
    report = _report(tmp_path, "h132_sundial_microdegree_reading")
    poisoned = next(d for d in report.diagnoses if d.cause == "adam_second_moment_poisoned")
    assert poisoned.where == ["head.bias"] and "the others it hit kept their pace" in (
        poisoned.summary
    )
    assert report.top.cause == "data_outlier"  # the batch behind it, as before


def test_a_bad_batch_whose_spike_stopped_no_tensor_poisons_nothing(tmp_path):
    # Control: a bad batch under Adam whose gradient spike every tensor rode out.
    report = _report(tmp_path, "h128_hop_yield_data_outlier")
    assert report.top.cause == "data_outlier"
    assert not any(d.cause == "adam_second_moment_poisoned" for d in report.diagnoses)


def test_logits_a_burst_of_the_rate_threw_are_the_bursts(tmp_path):
    # Trigger: a scheduler bug sets Adamax's rate 150x for two steps (150-151); the head's
    # logits, in range at the reading before, drift from step 152 and the loss spikes and
    # climbs. The drift was named first, as if it came before what broke the run; the burst
    # threw the logits, as it throws collapsed rows.
    report = _report(tmp_path, "h133_kayak_stroke_lr_blip")
    assert report.top.cause == "loss_spike"
    drift = next(d for d in report.diagnoses if d.cause == "output_logit_divergence")
    assert "the burst's updates threw them" in drift.why


def test_logits_driven_up_with_no_burst_stay_the_cause(tmp_path):
    # Control: a head group at 100x the trunk's rate from the start (5.0 against 0.05, Nesterov)
    # drives its logits up, with no burst of the rate: the drift stays the cause.
    report = _report(tmp_path, "h122_origami_head_lr")
    assert report.top.cause == "output_logit_divergence"


def test_a_spike_the_loss_climbed_from_within_a_few_steps_was_felt(tmp_path):
    # Trigger: a MetaCLIP-2 text tower under SGD whose z-loss weight was 5 for one step: the
    # gradient norm 30x its level at step 70, the next loss inside the band of the 20 before
    # (a noisy run: one of them stood at 0.99), so the spike was judged harmless; from step
    # 71 the loss left its level (0.3 -> 0.75-0.9) for 70 steps. A spike the loss climbed from
    # within a few steps was felt, as one it spiked after already was.
    report = _report(tmp_path, "h134_metaclip2_text_grad_spike")
    assert report.top.cause == "gradient_spike" and report.top.severity == "warning"
    assert "the loss climbed away from its level" in report.top.summary


def test_a_loss_that_jumped_with_the_spike_made_it(tmp_path):
    # Control: a checkpoint head that failed to load (re-initialised at step 80) makes the
    # loss and the gradients jump at the same step; the loss spike stays the cause.
    report = _report(tmp_path, "h134_chinese_clip_text_loss_spike")
    assert report.top.cause == "loss_spike"


def _head_apart(tmp_path, name, optimizer, head_lr):
    from helpers import tiny_mlp, train

    model = tiny_mlp()
    body = [p for n, p in model.named_parameters() if not n.startswith("4.")]
    head = list(model[4].parameters())
    opt = optimizer([{"params": body, "lr": head_lr / 300}, {"params": head, "lr": head_lr}])
    mon = steadygrad.Monitor(model, opt, tmp_path / name, progress=False)
    train(model, opt, mon, 40)
    mon.close()
    report = steadygrad.diagnose(tmp_path / name)
    return next(d for d in report.diagnoses if "trains at learning rate" in d.summary)


def test_an_rmsprop_group_far_above_any_rate_it_trains_at_is_a_typo(tmp_path):
    # Trigger (set 135's vision encoder-decoder: RMSprop's head group at 0.3, 600x the rest):
    # RMSprop's step, like Adam's, is the rate times a gradient over its running RMS, ~the
    # rate per weight, so a weight group at 0.3 is rewritten within tens of steps. It was said
    # "if that group is meant to learn this much faster, nothing is wrong".
    apart = _head_apart(tmp_path, "rmsprop", torch.optim.RMSprop, 0.3)
    assert apart.severity == "warning" and "rewritten within tens of steps" in apart.summary


def test_an_adadelta_group_at_its_default_rate_is_not(tmp_path):
    # Control: the same run under Adadelta, whose rate (1.0 by default) scales a unit-free
    # ratio of running updates to gradients: a group at 1.0, 300x the rest, is no typo of size.
    apart = _head_apart(tmp_path, "adadelta", torch.optim.Adadelta, 1.0)
    assert apart.severity == "info" and "nothing is wrong" in apart.summary


def test_a_spike_of_the_whole_gradient_is_placed_where_it_rose_furthest(tmp_path):
    # Trigger: a domain-adversarial net whose gradient-reversal weight jumps to 400 for one
    # step: the whole gradient spikes 29x, no tensor's own 70x test fires, and the spike had
    # no place. The tensors furthest above their usual level (the features the reversed
    # gradient flows into) place it.
    report = _report(tmp_path, "h136_ski_jump_grl_schedule")
    spike = next(d for d in report.diagnoses if d.cause == "gradient_spike")
    assert spike.where and all(w.startswith("features.") for w in spike.where)
    assert "furthest above its usual level" in spike.summary


def test_the_tensor_a_whole_gradient_spike_rose_in_hand_computed(tmp_path):
    # Hand oracle: at step 30, a.weight's gradient is 2x its usual 1.0 and b.weight's 40x its
    # usual 0.5 (20 against 0.5); c.weight's 30x a usual of 1e-6 is rounding beside them.
    rows = []
    for step in range(40):
        a, b, c = (2.0, 20.0, 3e-5) if step == 30 else (1.0, 0.5, 1e-6)
        rows.append(
            {
                "loss": 1.0,
                "grad_norm": (a * a + b * b) ** 0.5,
                "grad_norm/a.weight": a,
                "grad_norm/b.weight": b,
                "grad_norm/c.weight": c,
            }
        )
    spike = ("grad_norm_spike", 30, None, {"grad_norm": 20.1, "ratio": 18.0}, "warning")
    report = diagnose_stored(tmp_path, "hand", rows, [spike])
    found = next(d for d in report.diagnoses if d.cause == "gradient_spike")
    assert found.where == ["b.weight"]


def test_gradients_grown_into_a_break_during_a_burst_of_the_rate_are_the_bursts(tmp_path):
    # Trigger: a per-group warm restart sets the head's rate 40x for four steps (70-73); the
    # gradient grows at every one of them and the loss jumps 13x, then comes back. "Plain
    # gradient steps past 2/sharpness" was named first; those steps were the burst's, which
    # passed: the loss spike it made is the cause, as for steps that overshot.
    report = _report(tmp_path, "h138_harpoon_head_restart_spike")
    assert report.top.cause == "loss_spike"
    sharpness = next(d for d in report.diagnoses if d.cause == "sharpness_above_limit")
    assert "that raise's jolt" in sharpness.why


def test_a_rate_ramped_past_the_limit_and_kept_stays_the_cause(tmp_path):
    # Control: SGD whose rate ramps up past 2/sharpness and stays there blows up: no burst.
    report = _report(tmp_path, "h138_lumberjack_lr_past_sharpness")
    assert report.top.cause == "sharpness_above_limit"
