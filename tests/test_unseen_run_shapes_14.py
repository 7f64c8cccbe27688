"""Run shapes from the eighteenth session's held-out sets (67-69).

Each change has a trigger that fails on the code before it and a control that must not move."""

from __future__ import annotations

import math

import torch
from helpers import held_out_run
from torch import nn

import steadygrad
from steadygrad.core import Record
from steadygrad.diagnose.detectors import OutputLogitDivergence, UpdateRatioOutOfRange


def _ratio_findings(ratios):
    detector = UpdateRatioOutOfRange()
    return [
        f
        for step, ratio in enumerate(ratios)
        for f in detector.update(Record(10 * step, {"update_ratio/mask_token": ratio}))
    ]


# set 68's mask token, as recorded every 10 steps after its first (infinite) reading
MASK_TOKEN_RATIOS = [1.2, 0.301, 0.612, 0.382, 0.342, 0.292, 0.277]


def test_a_tensor_that_started_at_zero_is_not_judged_too_large(tmp_path):
    # set 68's masked autoencoder: a learnt mask token starts at exactly zero and its norm stays
    # ~0.02 while Adadelta moves it by ~0.01 a step: a ratio of 0.3-0.6 all run long, healthy.
    # The Monitor's first reading of such a tensor is infinite: that is how it is told apart.
    model = nn.Linear(4, 4)
    model.token = nn.Parameter(torch.zeros(4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        loss = (model(torch.randn(8, 4)) + model.token).pow(2).mean()
        loss.backward()
        opt.step()
        first = mon.step(loss)
    assert first.values["update_ratio/token"] == math.inf  # |dw| / |w| with w = 0
    assert math.isfinite(first.values["update_ratio/weight"])
    assert _ratio_findings([math.inf] + MASK_TOKEN_RATIOS) == []


def test_a_tensor_that_started_elsewhere_is_still_judged_too_large():
    # control: the same ratios on a tensor whose first reading was finite (an initialiser set
    # its scale): three readings in a row above a quarter is a warning
    found = _ratio_findings([0.02] + MASK_TOKEN_RATIOS)
    assert [(f.step, f.evidence["direction"]) for f in found] == [(30, "too_large")]


def _lse_findings(readings, classes=10):
    detector = OutputLogitDivergence()
    return [
        f
        for step, lse, loss in readings
        for f in detector.update(
            Record(step, {"logit_lse_mean": lse, "loss": loss}, meta={"output_classes": classes})
        )
    ]


# set 68's BLIP head divides by a temperature of 0.02 where it meant to multiply: log Z starts
# at 44.7 over 10 classes and shrinks as training starts (the first steps read one by one), as
# recorded: (step, log Z, loss)
INFLATED_START = [
    (0, 44.7, 48.53),
    (1, 39.8, 33.91),
    (2, 28.2, 30.95),
    (3, 26.3, 27.46),
    (4, 36.6, 35.24),
    (5, 34.4, 26.66),
    (25, 19.8, 12.39),
    (50, 9.2, 2.88),
    (75, 8.4, 2.2),
]


def test_logits_inflated_by_a_temperature_are_not_a_divergence_until_they_climb_again():
    # ... then log Z creeps up as the rows saturate (softmax collapse's doing) while the loss
    # falls far below where it started
    later = [(100, 8.3, 1.99), (125, 10.3, 1.16), (150, 11.0, 1.0), (175, 12.3, 0.51)]
    later += [(200 + 25 * i, 13.5 + 1.5 * i, 0.45 - 0.03 * i) for i in range(8)]
    assert _lse_findings(INFLATED_START + later) == []


def test_inflated_logits_that_climb_far_from_where_they_came_down_to_diverge():
    # control: the same start, then a climb from the lowest log Z with the loss stuck above
    # half of a uniform guess's (a z-loss of the wrong sign): a divergence, warned on the climb
    climb = [(75 + 25 * i, 8.4 + 4.0 * i, 2.2) for i in range(1, 9)]
    found = _lse_findings(INFLATED_START + climb)
    assert found and found[0].step > 75
    assert found[0].evidence["logit_lse_mean"] - 8.4 >= OutputLogitDivergence().lse_limit / 2


def test_weights_put_back_from_a_wrong_snapshot_are_the_loss_spike(tmp_path):
    # set 67's DeBERTa-v2: a resume at step 160 loads step 35's weights and keeps the optimizer's
    # state. The loss is too noisy for its jump to stand out as a spike, but it leaves its best
    # for good from the step the weights' norm moved 120x its usual step without growing
    ctx, report = held_out_run(tmp_path, "h67_hf_deberta_v2_resume_wrong_snapshot")
    assert ctx.checks and all(ctx.checks.values()), ctx.checks
    top = report.top
    assert top.cause == "loss_spike" and top.first_step == 160, top
    assert top.evidence["weights_replaced_at"] == [160]
    climb = next(d for d in report.diagnoses if d.cause == "loss_divergence")
    assert climb.score < top.score  # the climb is the replacement's doing


def test_the_same_model_trained_through_is_not_warned(tmp_path):
    ctx, report = held_out_run(tmp_path, "h67_hf_deberta_v2_control")
    assert ctx.checks and all(ctx.checks.values()), ctx.checks
    assert [d.cause for d in report.diagnoses if d.severity != "info"] == []


def test_a_preference_loss_written_by_hand_shows_its_logits_running_away(tmp_path):
    # set 67's DPO without its log-sigmoid: the objective is linear in the log-probabilities,
    # which the loss reads through torch.log_softmax (no cross-entropy call): log Z runs away
    ctx, report = held_out_run(tmp_path, "h67_dpo_linear_objective")
    assert ctx.checks and all(ctx.checks.values()), ctx.checks
    assert report.top.cause == "output_logit_divergence" and report.top.where == ["lm_head"]


def test_a_preference_loss_that_trains_well_is_not_warned(tmp_path):
    # set 52's DPO control: the same kind of hand-written loss, with its log-sigmoid
    ctx, report = held_out_run(tmp_path, "h52_dpo_healthy")
    assert ctx.checks and all(ctx.checks.values()), ctx.checks
    assert [d.cause for d in report.diagnoses if d.severity != "info"] == []
