"""Run shapes from the fifty-ninth session: a plain step past the stability limit whose first
update still lowered the loss, a slow climb under an Adam-type optimizer while its updates
pushed every weight outward, and rows rounded to one-hot by logits the model grew itself.

Each change has a trigger (a held-out fault it was found on) and a control that must still be
told apart."""

from __future__ import annotations

import numpy as np
from helpers import diagnose_stored, held_out_run, induced_report, steadygrad

from steadygrad.core import Record
from steadygrad.core.metrics import OPTIMIZER_FAMILY, PARAMETER_COUNT
from steadygrad.diagnose.detectors.transformer import FITTED, ROUNDING_MARGIN, SoftmaxCollapse
from steadygrad.diagnose.rules.divergence import STEADY_CLIMB
from steadygrad.diagnose.rules.sharpness import CLIMB_STEPS


def _loss(tmp_path, name: str) -> np.ndarray:
    return steadygrad.load(tmp_path / name).series("loss")[1]


def test_a_plain_step_past_the_limit_whose_first_update_lowered_the_loss(tmp_path):
    # Sets 612 and 622: plain SGD at a rate typed 100x too large. The first update lowered the
    # loss (the directions within the limit descend first), then it rose at every step to inf
    # within CLIMB_STEPS: named exploding gradients (the gradient grew from step 1), now the
    # step size past 2/sharpness
    for name in ("h612_coppersmith_rivet", "h622_slipface_creep_lr_typo"):
        report = induced_report(tmp_path, name)
        loss = _loss(tmp_path, name)
        broke = int(np.flatnonzero(~np.isfinite(loss))[0])
        assert loss[1] < loss[0] and broke <= CLIMB_STEPS  # the oracle, by hand
        assert np.all(np.diff(loss[1:broke]) > 0)
        assert report.top.cause == "sharpness_above_limit", name


def test_a_first_update_that_threw_the_loss_up_is_no_dip(tmp_path):
    # Controls, set 494 and 166: deep nets initialised too large under plain SGD, whose first
    # update threw the loss up (50 -> 166, 7.8 -> 608), then one step fell back (below where it
    # started, or not) before the blow-up. No first update lowered the loss: still named the
    # explosion through depth
    for name in ("h494_knitting_gauge_gain", "h166_petroglyph_fan_in_kernel"):
        report = induced_report(tmp_path, name)
        loss = _loss(tmp_path, name)
        assert loss[1] > loss[0]  # the oracle, by hand
        assert report.top.cause == "exploding_gradients", name


def test_a_slow_climb_while_the_updates_pushed_the_weights_outward(tmp_path):
    # Sets 618 and 628: an L2 penalty subtracted from the loss under Adam and Adamax. The
    # weights' norm grew by a near-constant step (Adam's bounded stride, not a factor) and the
    # loss crept from 0.02 to 0.05 (0.05 to 0.1): a quarter of the progress from the first loss,
    # so no climb was found at all. Now the loss ending STEADY_CLIMB times its best, its weights
    # pushed outward, is the climb
    for name in ("h618_sumo_charge_weight_decay_sign", "h628_cooper_hoop_weight_decay_sign"):
        report = induced_report(tmp_path, name)
        loss = _loss(tmp_path, name)
        medians = np.convolve(loss, np.ones(10) / 10, mode="valid")
        assert loss[-10:].mean() > STEADY_CLIMB * medians.min()  # the oracle, by hand
        norms = steadygrad.load(tmp_path / name).series("param_norm")[1]
        assert norms[-1] > 2 * norms[0]
        assert report.top.cause == "loss_divergence", name
        assert "pushed_stride" in report.top.evidence


def test_a_curriculum_and_a_new_task_are_no_climb_of_pushed_weights(tmp_path):
    # Controls, sets 536 and 590: a sequence-length warm-up whose loss rose as its sequences
    # grew, the weights growing only once it had begun (0.07 of the full stride in the first
    # half, 0.19 in the second); a continual run whose loss rose 25x at a new task (read as a
    # new stage) from a best of the first task's. Neither is a climb of pushed weights: the push
    # must be there from the first half, the best level the current stage's
    for name in (
        "h536_topshur_seq_length_warmup",
        "h590_quilting_stitch_pattern_replay_continual_classifier",
    ):
        _, report = held_out_run(tmp_path, name)
        assert "loss_divergence" not in report.causes(), name


def _pushed_rows(push_from: int, climb: float) -> list[dict[str, float]]:
    """200 records of a loss falling to 0.1 and holding it (noise +-0.01), then rising by
    ``climb`` a step from step 80, while the weights' norm grows by Adam's full stride
    (1e-3 x sqrt(10_000) = 0.1 a step) from ``push_from``."""
    draw = np.random.default_rng(0)
    loss = np.concatenate([np.linspace(2.0, 0.1, 50), 0.1 + 0.01 * draw.standard_normal(150)])
    return [
        {
            "loss": float(x) + climb * max(t - 80, 0),
            "param_norm": 5.0 + 0.1 * max(t - push_from, 0),
            "lr/0": 1e-3,
        }
        for t, x in enumerate(loss)
    ]


def test_weights_pushed_outward_all_along_under_a_loss_that_climbed(tmp_path):
    # By hand, no finding stored: weights pushed outward from the first step under a loss that
    # climbed 0.002 a step from step 80 (0.1 -> 0.34): the climb; the same push under a loss
    # that held its level, or a push that began only at step 120 under the climb: nothing
    config = {OPTIMIZER_FAMILY: "adam", PARAMETER_COUNT: 10_000}
    report = diagnose_stored(tmp_path, "climbed", _pushed_rows(0, 0.002), [], config=config)
    assert report.top.cause == "loss_divergence"
    assert report.top.evidence["pushed_stride"] > 0.5
    for name, rows in (
        ("held", _pushed_rows(0, 0.0)),
        ("pushed_late", _pushed_rows(120, 0.002)),
    ):
        assert diagnose_stored(tmp_path, name, rows, [], config=config).causes() == [], name


def _collapsed(first_max: float, loss_share: float) -> list[str]:
    """Severities SoftmaxCollapse gives 30 records of a loss falling from 2.0 to
    ``loss_share`` of it, the last five with a fifth of the rows rounded to one-hot, the
    largest logit ``first_max`` at the first reading (0.5 a model's own init)."""
    detector = SoftmaxCollapse()
    found = []
    for t in range(30):
        values = {"loss": 2.0 * loss_share ** (t / 29), "softmax_collapse": 0.2 * (t >= 25)}
        if t == 0:
            values["output_logit_max"] = first_max
        found += detector.update(Record(t, values))
    return [f.severity for f in found]


def test_rows_rounded_by_logits_the_model_grew_are_a_fit_up_to_a_quarter_of_its_loss():
    # By hand: rows rounding at a tenth of the first loss, from logits that began at 0.5 (the
    # model grew them): a fit, info; the same from logits already ROUNDING_MARGIN (16.6) apart
    # at the first reading (a scale inside the head, a cosine head's typo): warned; and at
    # half the first loss, however they began: warned
    assert 0.1 <= FITTED < 0.5 and 16.6 < ROUNDING_MARGIN < 16.7
    assert _collapsed(first_max=0.5, loss_share=0.1) == ["info"]
    assert _collapsed(first_max=100.0, loss_share=0.1) == ["warning"]
    assert _collapsed(first_max=0.5, loss_share=0.5) == ["warning"]


def test_blind_fits_whose_rows_rounded_and_a_cosine_scale_typo(tmp_path):
    # Controls, sets 624 and 633: a warm-up bump and a batch ramp on digit classifiers whose
    # rows rounded once they fit (4.5% and 10% of the first loss): no warning now. Set 637's
    # data outlier is no longer ranked under the collapse of its fit. Set 620's cosine head,
    # its scale typed 1e3 for 1e1 (max |logit| over 100 at step 0), is still the collapse
    for name in ("h624_quoits_toss_warmup_bump", "h633_sheepdog_batch_ramp"):
        _, report = held_out_run(tmp_path, name)
        assert all(d.severity == "info" for d in report.diagnoses), name
    assert induced_report(tmp_path, "h637_harmonium_bellows_adc_shard").top.cause == "data_outlier"
    report = induced_report(tmp_path, "h620_fogbow_cosine_scale_typo")
    widest = steadygrad.load(tmp_path / "h620_fogbow_cosine_scale_typo").series("output_logit_max")
    assert widest[1][0] > ROUNDING_MARGIN  # the oracle: born wide
    assert (report.top.cause, report.top.severity) == ("softmax_collapse", "warning")
