"""Run shapes from the forty-fifth session.

Each change has a trigger (a held-out scenario it was found on, run here with the one-line
attach: its fault is by construction) and a control that must not move."""

from __future__ import annotations

import math

import pytest
from helpers import diagnose_stored, held_out_run, induced_or_skip, steadygrad


def test_gradients_that_grow_with_a_climbing_error_are_the_climbs(tmp_path):
    # Trigger: set 173's beehive scale whose tare drifts up each step faster than the model
    # follows (NAdam, MSE): from step 42 the loss climbs 0.08 -> 17 and the gradient norm with
    # it, as a squared error's gradient does (0.15 -> 58). The climb was found at step 54, the
    # gradients' growth at 61, dated "since step 3" by a bias whose first reading was its
    # lowest: exploding gradients came first.
    ctx, report = held_out_run(tmp_path, "h173_beehive_tare_drift")
    induced_or_skip(ctx)
    assert report.top.cause == "loss_divergence"
    exploding = next(d for d in report.diagnoses if d.cause == "exploding_gradients")
    assert exploding.consequence_of


@pytest.mark.parametrize("loss_grew", [20.0, 2.0])
def test_a_gradient_is_the_errors_only_where_the_loss_grew_as_much(tmp_path, loss_grew):
    # From step 41 the gradient norm grows 0.3 -> 4 (13x); the loss either grows 20x with it
    # (an error growing: the gradient is its) or 2x (a network amplifying its gradient far
    # faster than the loss: the growth is the cause). The climb is found first either way.
    rows = []
    for t in range(90):
        rise = max(0, t - 41) / 20
        rows.append(
            {
                "loss": 0.1 * loss_grew ** min(rise, 1.0),
                "grad_norm": 0.3 * 13.3 ** min(rise, 1.0),
                "grad_norm/fc1.weight": 0.3 * 13.3 ** min(rise, 1.0),
                "lr/0": 1e-3,
            }
        )
    climb = {"best_level": 0.1, "best_level_step": 41, "ratio": 5.0, "loss_median": 0.5}
    growth = {"best_level": 0.3, "best_level_step": 41, "growth": 13.3, "grad_norm_median": 4.0}
    findings = [
        ("loss_divergence", 54, None, climb, "critical"),
        ("gradient_growth", 61, "fc1.weight", growth, "warning"),
    ]
    report = diagnose_stored(tmp_path, str(loss_grew), rows, findings, {"optimizer": "NAdam"})
    exploding = next(d for d in report.diagnoses if d.cause == "exploding_gradients")
    if loss_grew > 13.3:
        assert "a growing error makes a growing gradient" in (exploding.consequence_of or "")
    else:
        assert "growing error" not in (exploding.consequence_of or "")


def test_a_start_amplified_through_depth_is_read_before_clipping(tmp_path):
    # Trigger: set 175's lake-ice classifier, seven ReLU convolutions initialised N(0, 0.5) by an
    # embedding init whose isinstance tuple still lists Conv1d: each layer multiplies the signal
    # about 3x (the last one's output 3,000x the input's), the gradient before clipping is 66x
    # the weights' norm and stays in the hundreds, clipped to 1 at every step. The rule read
    # the clipped norm (1), saw no explosion, and named the softmax collapse the huge logits
    # make from step 0.
    ctx, report = held_out_run(tmp_path, "h175_lake_ice_conv_init_normal")
    induced_or_skip(ctx)
    assert report.top.cause == "exploding_gradients"
    assert {"convs.0", "convs.1"} <= set(report.top.where)
    collapse = next(d for d in report.diagnoses if d.cause == "softmax_collapse")
    assert "through depth" in (collapse.consequence_of or "")


def test_a_large_first_gradient_that_clipping_settles_is_no_explosion(tmp_path):
    # Control: set 107's IRNN (identity recurrence, clipping at 1): the gradient before clipping
    # starts at 64 (6x the weights) and settles under 4 within six clipped steps; it trains.
    ctx, report = held_out_run(tmp_path, "h107_irnn_pianoroll_control")
    induced_or_skip(ctx)
    assert report.healthy


def test_heavy_tailed_targets_under_a_robust_loss_make_hard_batches_not_outliers(tmp_path):
    # Control: set 181's snow-roller regressor, Student-t (2 degrees of freedom) label noise
    # under Huber loss: at step 91 one batch's loss stood 2.6x its median (z 6.3) with the
    # gradient norm at its usual size (Huber caps an outlying target's pull) and the next loss
    # back below where it stood. It warned, named a data outlier.
    ctx, report = held_out_run(tmp_path, "h181_control_snow_roller_huber")
    induced_or_skip(ctx)
    assert report.healthy
    assert not [f for f in ctx.monitor.findings if f.severity == "warning"]


def test_weights_swapped_for_their_average_still_spike_the_loss(tmp_path):
    # Trigger that must not move: set 180's EMA weights restored in place of the training ones
    # at step 110: the gradient there rose only 1.4x, but the loss stayed 10x up for steps.
    ctx, report = held_out_run(tmp_path, "h180_farrier_ema_restore_swapped")
    induced_or_skip(ctx)
    assert report.top.cause == "loss_spike"
    assert report.top.severity == "warning"


def test_a_hand_written_cell_whose_input_projection_carries_the_explosion_is_read(tmp_path):
    # Trigger: set 179's bungee Elman cell (inp and rec Linear layers, tanh), its recurrent
    # weights initialised N(0, 1): the gradient before clipping is 5e9 at step 0 against
    # weights of norm 48, clipped to 1 at every step. The input projection, applied at every
    # time step, carries more of it than rec (0.72 against 0.39 after clipping), so rec held
    # 15% of the squared norm, under the half asked; the head's gradient was 1e-10.
    ctx, report = held_out_run(tmp_path, "h179_bungee_recurrent_init_std")
    induced_or_skip(ctx)
    assert report.top.cause == "exploding_gradients"
    assert report.top.where[0] == "rec"


def test_a_tied_gru_language_model_with_clipping_is_no_explosion(tmp_path):
    # Control: set 181's GRU language model, embedding tied to the head, AdamW with warm-up,
    # cosine decay and clipping: it trains.
    ctx, report = held_out_run(tmp_path, "h181_control_psaltery_tied_lm")
    induced_or_skip(ctx)
    assert report.healthy


@pytest.mark.parametrize("shape", ["compounding", "at_once"])
def test_weights_grown_everywhere_explain_a_growth_only_when_they_compound(tmp_path, shape):
    # Every weight tensor 4x larger by step 110: scaled by one factor each step (a weight decay
    # of the wrong sign: half the growth, in log, in the later half of the span) or grown at
    # once and slowing (Adam's first steps far larger than a 0.02 init: set 180's attention
    # without its q/k norms, whose logits were named the weights' consequence).
    def norm(t):
        return 4.0 ** (t / 110) if shape == "compounding" else 4.0 - 3.0 * math.exp(-t / 8)

    rows = [
        {
            "loss": 1.0 if t < 100 else 1.0 + 0.2 * (t - 100),
            **{f"param_norm/{w}.weight": norm(t) for w in ("stem", "trans1", "head")},
        }
        for t in range(120)
    ]
    grew = ("gradient_growth", 110, "stem.weight", {"started_at_step": 20}, "critical")
    climb = ("loss_divergence", 105, None, {"ratio": 3.0, "best_level_step": 99}, "critical")
    report = diagnose_stored(tmp_path, shape, rows, [grew, climb])
    explosion = next(d for d in report.diagnoses if d.cause == "exploding_gradients")
    assert ("everywhere" in (explosion.consequence_of or "")) == (shape == "compounding")


def test_attention_logits_of_weights_grown_at_once_are_the_attentions(tmp_path):
    # Trigger: set 180's morin-khuur transformer, its q/k LayerNorms built but never applied,
    # AdamW at 2e-2: the logits rose from 0.1 to 166; every weight had grown 4x from its 0.02
    # init, most of it in the first 15 steps.
    ctx, report = held_out_run(tmp_path, "h180_morin_khuur_qk_norm_skipped")
    induced_or_skip(ctx)
    assert report.top.cause == "attention_logit_growth"
    assert not report.top.consequence_of


def test_attention_pooling_whose_query_grew_unbounded_is_read_and_named(tmp_path):
    # Trigger: set 186's bocce scorer, attention pooling by hand (a learnt query against every
    # ball's key, softmax over the 8 balls), its q/k LayerNorms dropped, Adam at 1e-2: the
    # logits grew 2,700x to 224 by step 51. The (batch, balls) softmax was not read as
    # attention at all. (Its growth is still put down to every weight's, which grew 2.5x
    # under Adam at that rate: left, see the session's note.)
    ctx, report = held_out_run(tmp_path, "h186_bocce_pointer_attention_no_qk_norm")
    induced_or_skip(ctx)
    attention = next(d for d in report.diagnoses if d.cause == "attention_logit_growth")
    assert attention.where == ["attn"] and attention.severity == "warning"
    assert attention.evidence["first"]["attn_logit_max"] > 100


def test_a_small_language_models_sharpest_heads_learnt_fast_are_no_early_warning(tmp_path):
    # Control: set 186's tied chess-move language model (warm-up, cosine, clipping): its second
    # block's largest logit rose x2.3, x1.9 to 39 at step 125 and levelled near 50-55; the
    # early warning fired at 39.
    ctx, report = held_out_run(tmp_path, "h186_chess_tied_lm_warmup_cosine")
    induced_or_skip(ctx)
    assert not [f for f in ctx.monitor.findings if f.severity != "info"]
    assert report.healthy


def test_a_temperature_bug_from_step_zero_explains_the_first_gradient(tmp_path):
    # Trigger: set 190's graupel cosine classifier, its CLIP-style log scale stored linear
    # (exp(14.3) = 1.6e6 on the cosines from step 0): rows collapsed from the first reading,
    # and the first gradient was 1.5e6 (100x the weights), found at initialisation: the two
    # tied, the explosion first. The scale read from step 0 did not count, its collapse
    # reading being at step 0 too.
    ctx, report = held_out_run(tmp_path, "h190_graupel_logit_scale_linear")
    induced_or_skip(ctx)
    assert report.top.cause == "softmax_collapse"
    exploding = next(d for d in report.diagnoses if d.cause == "exploding_gradients")
    assert "a temperature applied the wrong way" in (exploding.consequence_of or "")


@pytest.mark.parametrize("scale", [1.6e6, 2.0])
def test_a_first_gradient_is_the_scales_only_where_a_large_number_multiplied_the_logits(
    tmp_path, scale
):
    rows = [
        {"loss": 5.0, "grad_norm": 1e6 if t == 0 else 50.0, "output_scale": scale}
        for t in range(40)
    ]
    born = {"grad_norm": 1e6, "param_norm": 1e4, "ratio": 100.0, "at_initialisation": True}
    findings = [("gradient_growth", 0, "fc1.bias", born, "critical")]
    report = diagnose_stored(tmp_path, str(scale), rows, findings)
    exploding = next(d for d in report.diagnoses if d.cause == "exploding_gradients")
    assert bool(exploding.consequence_of) == (scale > 20)


@pytest.mark.parametrize("into", ["rising", "falling"])
def test_a_stack_exploded_from_the_start_is_placed_where_its_rise_began(tmp_path, into):
    # Set 188's forge-weld MLP, twelve tanh layers initialised N(0, 1): at step 0 the weight
    # gradients of layers.11 back to layers.2 stand 1.3-1.9x each the one after (a chain,
    # 130x), then layers.1 1.14x layers.2 and layers.0 1.37x layers.1: the rise goes on to the
    # input, under the chain's step. Named from layers.2. Control: layers.1 below layers.2.
    chain = {f"layers.{i}.weight": 0.18 * 1.72 ** (11 - i) for i in range(2, 12)}
    top = chain["layers.2.weight"]
    early = 1.14 * top if into == "rising" else 0.5 * top
    grads = {**chain, "layers.1.weight": early, "layers.0.weight": 1.37 * early}
    rows = [
        {"loss": 1.0, "grad_norm": 60.0, "param_norm": 100.0}
        | {f"grad_norm/{k}": v for k, v in grads.items()}
        for _ in range(30)
    ]
    report = diagnose_stored(tmp_path, into, rows, [])
    exploding = next(d for d in report.diagnoses if d.cause == "exploding_gradients")
    first = "layers.0" if into == "rising" else "layers.2"
    assert exploding.where[0] == first


def test_an_overflow_every_output_hid_is_placed_by_the_gradients_it_made(tmp_path):
    # Trigger: set 185's wingsuit RBF net, squared distances by one matmul under fp16 autocast:
    # from step 80 the long glides' |x|^2 overflows to inf inside the kernel, its clamp and
    # exp(-inf) give finite features, and only kernel.log_width's gradient is NaN; the scaler
    # skips every step. No output was non-finite, and the overflow was placed nowhere.
    ctx, report = held_out_run(tmp_path, "h185_wingsuit_rbf_fp16_distances")
    induced_or_skip(ctx)
    overflow = next(d for d in report.diagnoses if d.cause == "amp_overflow")
    assert overflow.where == ["kernel"]


@pytest.mark.parametrize("every", [False, True])
def test_non_finite_gradients_place_an_overflow_only_where_others_stayed_finite(tmp_path, every):
    from steadygrad.diagnose.rules import RunFacts, _nonfinite_gradients_only_in

    nan = float("nan")
    rows = [
        {
            "loss": 1.0,
            "grad_norm/kernel.log_width": nan if t == 5 else 0.1,
            "grad_norm/fc1.weight": nan if t == 5 and every else 0.2,
        }
        for t in range(8)
    ]
    diagnose_stored(tmp_path, str(every), rows, [])
    facts = RunFacts(steadygrad.load(tmp_path / str(every)))
    assert _nonfinite_gradients_only_in(facts, 5) == ([] if every else ["kernel"])


def test_a_growth_in_the_recurrence_that_amplified_the_first_gradient_dates_from_it(tmp_path):
    # Trigger: set 190's ice-storm field unrolled 48 Euler steps with dt in the wrong units:
    # its first gradient was 32x the weights, 53% of it the field's; the growth detector,
    # waiting for a loss that kept falling through its noise, confirmed a growth in field.fc1
    # at step 19, when the loss blew up: no warning came before the divergence.
    ctx, report = held_out_run(tmp_path, "h190_ice_storm_euler_dt_units")
    induced_or_skip(ctx)
    assert report.top.cause == "exploding_gradients" and report.top.first_step == 0
    assert report.top.where == ["field.fc1"]


@pytest.mark.parametrize("grown", ["cell.weight_hh", "head.weight"])
def test_a_later_growth_dates_from_the_start_only_inside_the_amplifying_recurrence(tmp_path, grown):
    rows = [
        {
            "loss": 1.0 + (t > 40) * (t - 40),
            "grad_norm": 320.0 if t == 0 else 5.0 * (1 + (t > 40) * (t - 40)),
            "param_norm": 10.0,
            "grad_norm/cell.weight_hh": 300.0 if t == 0 else 4.0,
            "grad_norm/head.weight": 50.0 if t == 0 else 1.0,
        }
        for t in range(60)
    ]
    growth = {"best_level": 5.0, "best_level_step": 40, "growth": 12.0}
    findings = [("gradient_growth", 50, grown, growth, "warning")]
    config = {"recurrent_modules": ["cell"]}
    report = diagnose_stored(tmp_path, grown, rows, findings, config)
    exploding = next(d for d in report.diagnoses if d.cause == "exploding_gradients")
    assert exploding.first_step == (0 if grown.startswith("cell") else 50)


# Set 193's green-flash tanh MLP, 24 layers initialised with the uniform bound as a normal std:
# at step 0 the weight gradients rise from layers.23 back to layers.1, 172x, at 1.06-1.36x a
# layer; two links under 1.2x broke every chain, and nothing was found.
GREEN_FLASH = [20.13, 27.89, 23.39, 17.69, 16.69, 13.31, 11.38, 8.49, 6.30, 5.30, 4.42, 3.25]
GREEN_FLASH += [2.51, 1.98, 1.51, 1.18, 0.96, 0.73, 0.54, 0.40, 0.33, 0.26, 0.22, 0.16]


@pytest.mark.parametrize(
    ("norms", "found"),
    [
        (GREEN_FLASH, 24),
        ([1.0 + 0.05 * (i % 3) for i in range(24)], 0),  # a healthy deep stack: level
        ([20.7, 19.9, 13.4, 0.49, 0.13], 0),  # a feature pyramid's five parallel projections
        ([2.0**i for i in range(6, 0, -1)], 6),  # a chain, each layer 2x
    ],
)
def test_a_stack_whose_gradients_rise_back_steadily_is_one_chain(norms, found):
    from steadygrad.diagnose.detectors.trends import stack_chains

    chains = stack_chains({f"layers.{i}.weight": g for i, g in enumerate(norms)})
    assert max((len(c) for c in chains), default=0) == found


def test_a_deep_stack_rising_back_under_the_chains_step_is_named_at_init(tmp_path):
    ctx, report = held_out_run(tmp_path, "h193_green_flash_uniform_bound_as_std")
    induced_or_skip(ctx)
    assert report.top.cause == "exploding_gradients"
    assert {"layers.0", "layers.1"} & set(report.top.where)


def test_a_tenfold_loss_spike_a_huber_loss_capped_is_no_warning(tmp_path):
    # Control: set 202's rogue-wave regressor, Huber loss on Student-t targets: one batch's
    # loss stood 10.5x its median at step 115 with the gradient 1.5x its own, and the next loss
    # back where it was. A spike of 4x or more was held to be a bad batch's whatever the
    # gradient did, and warned.
    ctx, report = held_out_run(tmp_path, "h202_rogue_wave_huber_control")
    induced_or_skip(ctx)
    assert report.healthy
    assert not [f for f in ctx.monitor.findings if f.severity == "warning"]
