"""Run shapes from the fifty-fifth session: a loss that steps up to a new stage of the data.

Each change has a trigger (a held-out scenario it was found on) and a control that must not
move."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from helpers import held_out_run, steadygrad

from steadygrad.core import Record
from steadygrad.diagnose.detectors.stages import (
    BACK,
    CLIMB,
    LEVEL_BEFORE,
    REPLACED,
    STAGE,
    STAGE_BEFORE,
    STEPPED_UP,
    THREW,
    WATCHING,
    StageWatch,
)
from steadygrad.diagnose.detectors.training import NEW_STAGE, LossSpikeDetector
from steadygrad.diagnose.detectors.trends import START_RECORDS, GradientGrowth, LossDivergence


def _said(losses: list[float]) -> list[str | None]:
    watch = StageWatch()
    return [watch.add(x, step) for step, x in enumerate(losses)]


def _verdicts(losses: list[float]) -> list[str]:
    return [s for s in _said(losses) if s not in (None, WATCHING)]


SETTLED = [0.2 + 0.01 * (i % 3) for i in range(40)]  # a loss at its level, a little noise


def test_a_step_up_that_holds_or_falls_is_a_stage():
    held = SETTLED + [0.9, 0.85, 0.95, 0.9, 0.88, 0.92, 0.86, 0.9, 0.87, 0.91]
    falling = SETTLED + [0.9 - 0.05 * i for i in range(10)]
    assert _verdicts(held) == [STAGE]
    assert _verdicts(falling) == [STAGE]
    assert _said(held)[len(SETTLED)] == WATCHING  # from the step up itself


def test_a_step_up_that_climbs_on_comes_back_or_blows_up_is_no_stage():
    climbing = SETTLED + [0.9 + 0.1 * i for i in range(10)]  # +1.0 on a step up of 0.7
    back = SETTLED + [0.9, 0.21, 0.2]  # one batch
    blown = SETTLED + [0.9, 1.2, 3.0]  # 3x the step up's loss: past STEPPED_UP again
    assert _verdicts(climbing) == [CLIMB]
    assert _verdicts(back) == [BACK]
    assert _verdicts(blown) == [CLIMB]
    assert _verdicts(SETTLED + [0.9, float("nan")]) == [CLIMB]


def test_no_step_up_without_a_settled_level_before_it():
    # a loss under STEPPED_UP times its level, one whose previous loss had already left it,
    # and one with fewer than STAGE_BEFORE losses before it: nothing watched
    assert STEPPED_UP * 0.2 > 0.35
    assert set(_said(SETTLED + [0.35] * 5)) == {None}
    assert LEVEL_BEFORE * 0.21 < 0.35
    assert set(_said(SETTLED + [0.35, 0.9, 0.9])) == {None}
    assert set(_said(SETTLED[: STAGE_BEFORE - 1] + [0.9] * 12)) == {None}


def _run(detector, losses: list[float]):
    return [f for step, x in enumerate(losses) for f in detector.update(Record(step, {"loss": x}))]


# A curriculum in three stages: each learnt from 2.3 down to 0.3 within some 20 steps, then held
# there (batches scattered by +-0.02) until the next, harder, starts
_NOISE = np.random.default_rng(0).uniform(-0.02, 0.02, 240)
STAGES = [2.0 * 0.8 ** (i % 80) + 0.3 + float(e) for i, e in enumerate(_NOISE)]


def test_loss_divergence_starts_again_at_each_stage_and_still_finds_a_climb():
    assert STAGES[80] / statistics.median(STAGES[60:80]) >= STEPPED_UP
    assert _run(LossDivergence(), STAGES) == []
    # control: the same run whose last stage climbs on from its first values
    climbing = STAGES[:160] + [2.3 + 0.05 * i for i in range(80)]
    found = _run(LossDivergence(), climbing)
    assert found and found[0].severity == "warning" and found[0].step > 160


def test_a_loss_spike_at_a_stage_is_info_and_a_batch_that_comes_back_a_warning():
    found = _run(LossSpikeDetector(), STAGES)
    assert found and all(f.severity == "info" and f.evidence[NEW_STAGE] for f in found)
    assert {f.step for f in found} <= {80, 160}
    one_batch = STAGES[:70] + [3.0] + STAGES[71:]  # a bad batch in the first stage's plateau
    found = _run(LossSpikeDetector(), one_batch)
    spikes = [f for f in found if f.severity == "warning"]
    assert [f.step for f in spikes] == [70] and NEW_STAGE not in spikes[0].evidence
    assert spikes[0].evidence["loss_after"] == pytest.approx(STAGES[71])  # told one loss late
    climbing = STAGES[:80] + [2.3 + 0.2 * i for i in range(20)]
    spikes = [f for f in _run(LossSpikeDetector(), climbing) if f.severity == "warning"]
    assert [f.step for f in spikes] == [80] and NEW_STAGE not in spikes[0].evidence


def _stepped_up_by_hand(run_dir) -> tuple[float, float, float]:
    """From the stored losses: the largest one-step rise over the median of the STAGE_BEFORE
    losses before it (the loss just before still under LEVEL_BEFORE times that median), and the
    medians of the first and of the last four of the STAGE_WATCH-long stretch it began."""
    _, loss = steadygrad.load(run_dir).series("loss")
    best = (0.0, 0.0, 0.0)
    for i in range(STAGE_BEFORE, len(loss) - 10):
        level = float(np.median(loss[i - STAGE_BEFORE : i]))
        if loss[i - 1] < LEVEL_BEFORE * level and loss[i] / level > best[0]:
            stage = loss[i : i + 10]
            best = (loss[i] / level, float(np.median(stage[:4])), float(np.median(stage[-4:])))
    return best


@pytest.mark.parametrize(
    "name",
    [
        "h555_paragliding_hard_negatives_on",  # hard negatives mined from step 100
        "h557_gravel_raking_second_task_joins",  # a second task's loss joins the sum
        "h560_rip_current_storm_shard_switch",  # a harder, clean shard from step 120
    ],
)
def test_blind_controls_whose_data_stepped_up_are_told_nothing(tmp_path, name):
    # Each warned (a loss divergence, a loss spike) before: the loss stepped up 3-20x at one
    # step after an ordinary update, then held or fell. (Set 539's fresh head on a trained
    # trunk still warns: its weights were replaced between steps, as a stale reload's are)
    ctx, report = held_out_run(tmp_path, name)
    jump, first, last = _stepped_up_by_hand(tmp_path / name)
    assert jump >= STEPPED_UP and last <= first  # the oracle, from the stored series
    run = steadygrad.load(tmp_path / name)
    assert not [f for f in run.findings() if f.severity != "info"]
    assert all(d.severity == "info" for d in report.diagnoses)


@pytest.mark.parametrize(
    "name, cause",
    [
        ("h530_chimney_sweep_multistep_gamma_typo", "sharpness_above_limit"),  # climbs on
        ("h543_hurdy_gurdy_adc_count_shard", "data_outlier"),  # one batch, the loss back
    ],
)
def test_blind_faults_with_a_jump_keep_their_warnings(tmp_path, name, cause):
    ctx, report = held_out_run(tmp_path, name)
    assert report.top.cause == cause and report.top.severity != "info"
    run = steadygrad.load(tmp_path / name)
    assert [f for f in run.findings() if f.kind == "loss_spike" and f.severity == "warning"]


def _gradient_growth(losses: list[float], norms: list[float]):
    detector = GradientGrowth()
    return [
        f
        for step, (x, g) in enumerate(zip(losses, norms, strict=True))
        for f in detector.update(Record(step, {"loss": x, "grad_norm": g, "grad_norm/w": g}))
    ]


def test_gradients_that_grow_as_a_model_leaves_its_plateau_at_chance_are_no_explosion():
    # 30 records at chance (ln 2) with a gradient of 0.01, its floor set at record 15, past
    # START_RECORDS; then the loss falls to 0.2 as the gradient grows 300x and a bump to 0.5 gives back
    # half the progress: a model that left its plateau. The same growth with the loss still at
    # chance is found
    plateau = [math.log(2)] * 30
    grads = [0.02] * 10 + [0.01] * 20 + [0.01 * 1.3**t for t in range(1, 23)] + [3.0] * 20
    learnt = plateau + [math.log(2) - 0.025 * t for t in range(1, 21)] + [0.5] * 22
    assert 15 > START_RECORDS and 0.5 - 0.24 > 0.5 * (math.log(2) - 0.24)  # half given back
    assert _gradient_growth(learnt, grads) == []
    stuck = plateau + [math.log(2) + 0.01 * t for t in range(42)]
    found = _gradient_growth(stuck, grads)
    assert found and found[0].kind == "gradient_growth"


def test_a_blind_transformer_control_leaving_its_plateau_is_told_nothing(tmp_path):
    # Set 560's RoBERTa (warm-up, clipping at 1) sat at chance for ~50 steps with a gradient of
    # 0.15, then learnt: its pre-clip gradient grew 150x+ and a bump at steps 78-81 gave back
    # half the progress. It was a critical gradient growth; now nothing
    name = "h560_pelorus_roberta_warmup"
    ctx, report = held_out_run(tmp_path, name)
    run = steadygrad.load(tmp_path / name)
    _, loss = run.series("loss")
    _, grads = run.series("grad_norm_preclip")
    medians = np.array([np.median(grads[i - 5 : i]) for i in range(5, len(grads) + 1)])
    floor = int(np.argmin(medians))  # the oracle: where the gradient's floor was set, by hand
    assert floor + 5 > START_RECORDS and medians.max() / medians[floor] >= 100
    assert np.median(loss[floor : floor + 5]) > 0.8 * np.median(loss[:5])  # still at chance
    assert np.median(loss[-10:]) < 0.2 * loss[0]
    assert not [f for f in run.findings() if f.severity != "info"]
    assert report.healthy or all(d.severity == "info" for d in report.diagnoses)


def test_a_step_up_the_weights_made_is_not_watched():
    # The same step up after weights that moved as usual (1e-3 a record), after an update that
    # moved them 20x that (a rate glitch: THREW is 10), and with the weights replaced between
    # the records (50x on an ordinary gradient: REPLACED is 30): only the first is watched
    losses = SETTLED + [0.9]
    grads = [1.0] * len(losses)

    def said(moves: list[float], per_coordinate: bool = True) -> str | None:
        watch = StageWatch()
        watch.per_coordinate = per_coordinate
        weights = list(np.cumsum(moves))
        return [
            watch.add(x, t, w, g)
            for t, (x, w, g) in enumerate(zip(losses, weights, grads, strict=True))
        ][-1]

    usual = [1e-3] * len(losses)
    assert THREW < 20 and REPLACED < 50
    assert said(usual) == WATCHING
    assert said(usual[:-2] + [20e-3, 1e-3]) is None  # the update before the step up threw them
    assert said(usual[:-1] + [50e-3]) is None  # replaced between the records
    # under SGD a step that large is the step up's own gradient's when that was 60x its usual
    grads[-1] = 60.0
    assert said(usual[:-1] + [50e-3], per_coordinate=False) == WATCHING
