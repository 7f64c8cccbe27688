"""Run shapes from the fifty-sixth session: a step up that came with the optimizer's restart, a
knock watched as a step up, a damping that held nothing back, and a group of scalar knobs.

Each change has a trigger (a held-out scenario it was found on) and a control that must not
move."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import held_out_run, steadygrad

from steadygrad.diagnose.detectors.stages import (
    LEVEL_BEFORE,
    STEPPED_UP,
    WATCHING,
    StageWatch,
)
from steadygrad.diagnose.detectors.training import NEW_STAGE

SETTLED = [0.2 + 0.01 * (i % 3) for i in range(40)]  # a loss at its level, a little noise


def _warnings(tmp_path, name: str) -> list:
    run = steadygrad.load(tmp_path / name)
    return [f for f in run.findings() if f.severity != "info"]


@pytest.mark.parametrize(
    "name",
    [
        "h563_guilloche_resume_loss_spike",  # Adam's state lost on a resume: the weights made it
        "h225_polocrosse_stale_checkpoint",  # trained weights reloaded from an older step
        "h246_stucco_render_stale_checkpoint",  # an early checkpoint reloaded: near the init
        "h529_tapa_shard_millimetres",  # a bad shard the run took some steps to get over
        "h575_roller_derby_fresh_adam",  # a resume without Adam's state
    ],
)
def test_blind_faults_that_jump_and_come_back_keep_their_warnings(tmp_path, name):
    ctx, report = held_out_run(tmp_path, name)
    assert all(ctx.checks.values())
    assert report.top.severity != "info" and _warnings(tmp_path, name)
    spikes = [f for f in _warnings(tmp_path, name) if f.kind == "loss_spike"]
    assert spikes and not any(f.evidence.get(NEW_STAGE) for f in spikes)


def test_a_spike_whose_damping_held_nothing_back_is_named_by_itself(tmp_path):
    # A 64x gradient for one step under NAdam: the updates shrank to ~40% after it, and the loss
    # went on falling at its pace (the scenario checks that training went on normally)
    name = "h581_cheese_wire_accumulation"
    ctx, report = held_out_run(tmp_path, name)
    assert all(ctx.checks.values())
    steps, loss = steadygrad.load(tmp_path / name).series("loss")

    def median(start: int) -> float:  # the loss over one 25-step span, by hand
        return float(np.median(loss[(steps >= start) & (steps < start + 25)]))

    spike = 140  # the scenario's resumed step
    earlier, before = median(spike - 50), median(spike - 25)
    after, later = median(spike + 20), median(spike + 45)
    assert later <= before and math.log(after / later) >= math.log(earlier / before) / 2
    assert report.top.cause == "gradient_spike"
    assert "adam_second_moment_poisoned" not in {d.cause for d in report.diagnoses}


def test_a_spike_that_held_the_loss_back_still_poisoned_the_moments(tmp_path):
    # control: a stale loss scale of 1e4 for one step under Adam; the loss stood higher after
    ctx, report = held_out_run(tmp_path, "h578_mooring_stale_loss_scale")
    assert all(ctx.checks.values())
    assert report.top.cause == "adam_second_moment_poisoned"


def test_a_group_of_scalar_knobs_at_a_rate_of_its_own_is_no_typo(tmp_path):
    # A learnt logit scale in a group of its own at 50x the body's rate (its clamp dropped: the
    # head's logits grow): the growth is named, not the body's rate "50x below the rest"
    name = "h583_ice_screw_unclamped_logit_scale"
    ctx, report = held_out_run(tmp_path, name)
    assert all(ctx.checks.values())
    scalars = [n for n, p in ctx.monitor.model.named_parameters() if p.numel() == 1]
    assert steadygrad.load(tmp_path / name).config["scalar_parameters"] == scalars
    assert scalars == ["head.log_scale"]
    assert report.top.cause == "output_logit_divergence"
    assert "update_ratio_out_of_range" not in {d.cause for d in report.diagnoses}


def test_a_step_up_after_the_optimizer_restarted_is_not_watched():
    # the optimizer's state started again from nothing at the step up, or at the record before
    # it: its first steps are the size of its rate, the weights made the jump
    def said(losses: list[float], restarted_at: int | None) -> str | None:
        watch = StageWatch()
        return [watch.add(x, t, restarted=t == restarted_at) for t, x in enumerate(losses)][-1]

    assert said(SETTLED + [0.9], None) == WATCHING
    assert said(SETTLED + [0.9], len(SETTLED)) is None
    assert said(SETTLED + [0.9], len(SETTLED) - 1) is None
    assert said(SETTLED + [0.9], len(SETTLED) - 2) == WATCHING  # long enough before


def test_a_knock_watched_as_a_step_up_keeps_the_climbs_early_alarm(tmp_path):
    # An uncapped warm-up: the loss bumps 2-3.5x over six records and comes back (watched: a
    # stage or a climb?), then blows up at step 97. A watch that ended back at the old level is
    # no stage: the divergence detector keeps the alarm it sounds some 60 steps before the
    # blow-up (a StageWatch that waited for most losses to come back lost it)
    name = "h575_sand_yacht_uncapped_warmup"
    ctx, report = held_out_run(tmp_path, name)
    assert all(ctx.checks.values())
    steps, loss = steadygrad.load(tmp_path / name).series("loss")
    knock = loss[(steps >= 31) & (steps <= 36)]
    level = float(np.median(loss[(steps >= 11) & (steps < 31)]))
    assert knock.max() >= STEPPED_UP * level and np.median(loss[(steps >= 37) & (steps <= 40)]) < (
        LEVEL_BEFORE * level
    )
    climbs = [f for f in _warnings(tmp_path, name) if f.kind == "loss_divergence"]
    assert climbs and climbs[0].step <= 45
    assert report.top.cause == "sharpness_above_limit"
