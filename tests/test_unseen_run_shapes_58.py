"""Run shapes from the fifty-eighth session: a gradient measured from the flat start a model had
long left, a warm restart's bump, a loss knocked up in one step that only came down after, and
units read dead just after a run broke in one step.

Each change has a trigger (a held-out control it was found on) and a control that must still be
found."""

from __future__ import annotations

import math
import statistics

import numpy as np
from helpers import diagnose_stored, held_out_run, induced_or_skip, steadygrad

from steadygrad.core.record import Record
from steadygrad.diagnose.detectors.stages import (
    RESTART_RAISE,
    RESTART_SEEN,
    STAGE_BEFORE,
    STEPPED_UP,
    RateRestarts,
)
from steadygrad.diagnose.detectors.trends import START_LEFT, GradientGrowth, LossDivergence
from steadygrad.diagnose.rules.facts import JUMP_BEFORE, JUMPED


def _found(detector, losses: list[float], extra: list[dict[str, float]] | None = None):
    extra = extra or [{} for _ in losses]
    return [
        f
        for step, (x, more) in enumerate(zip(losses, extra, strict=True))
        for f in detector.update(Record(step, {"loss": x, **more}))
        if f.severity != "info"
    ]


def _left_the_plateau(bump_grad: float) -> tuple[list[float], list[dict[str, float]]]:
    """15 records at chance (ln 2) with a gradient of 0.01; the loss falls to 0.2 as the
    gradient grows 100x to 1.0; then a bump climbs back over 5 records to 0.65 (above where the
    flat start was left) and stays, while the gradient stands at ``bump_grad``."""
    chance = math.log(2)
    losses = [chance] * 15 + [chance - (chance - 0.2) * t / 20 for t in range(1, 21)]
    grads = [0.01] * 15 + [0.01 * 100 ** (t / 20) for t in range(1, 21)]
    losses += [0.2] * 20 + [0.2 + 0.09 * t for t in range(1, 6)] + [0.65] * 10
    grads += [1.0] * 20 + [bump_grad] * 15
    return losses, [{"grad_norm": g, "grad_norm/w": g} for g in grads]


def test_a_gradient_is_measured_from_where_the_model_left_its_flat_start():
    # the bump stands above 0.8 of chance, so the flat start no longer reads as left: its floor
    # of 0.01 made a growth of 200x critical. From the level at leaving (by hand: the gradient
    # when the loss fell START_LEFT below chance, under 1.0), 2x is no growth; 100x still is
    losses, values = _left_the_plateau(bump_grad=2.0)
    assert losses[-1] > (1 - START_LEFT) * math.log(2)
    assert _found(GradientGrowth(), losses, values) == []
    losses, values = _left_the_plateau(bump_grad=100.0)
    found = _found(GradientGrowth(), losses, values)
    assert found and found[0].kind == "gradient_growth" and found[0].step >= 55


def test_a_rate_raised_back_to_one_already_used_is_a_restart():
    restarts = RateRestarts()
    said = [restarts.add({"0": lr}) for lr in [0.1, 0.01, 0.05, 0.012, 0.2]]
    # 0.01 -> 0.05 is 5x (>= RESTART_RAISE), to half the highest used: a restart; 0.012 -> 0.2
    # is past the highest used (0.1 * RESTART_SEEN): a new peak, no restart
    assert 0.05 / 0.01 >= RESTART_RAISE and 0.2 > RESTART_SEEN * 0.1
    assert said == [False, False, True, False, False]


def _cycles(peak_after: float) -> tuple[list[float], list[dict[str, float]]]:
    """Three cosine cycles of 50 records, the first from a rate of 0.3, the next two from
    ``peak_after``; the loss falls through each and climbs 1.3x a record for 4 records after
    each restart, then falls back."""
    losses, rates = [], []
    level = 1.0
    for cycle in range(3):
        peak = 0.3 if cycle == 0 else peak_after
        for t in range(50):
            rates.append(peak * 0.5 * (1 + math.cos(math.pi * t / 50)) + 1e-4)
            if cycle and t < 5:
                losses.append(level * 1.3**t)
            elif cycle and t < 10:
                losses.append(level * 1.3 ** (9 - t))
            else:
                level = max(level * 0.97, 0.2)
                losses.append(level * (1 + 0.02 * (t % 3)))
    return losses, [{"lr/0": r} for r in rates]


def test_a_warm_restarts_bump_is_the_schedules_and_a_new_peak_is_not():
    # the loss climbs 1.3^4 = 2.9x over the records after each restart (a climb, not a step):
    # back to a rate already used it is the restart's; raised 10x past it, it is a climb
    losses, rates = _cycles(peak_after=0.3)
    assert _found(LossDivergence(), losses, rates) == []
    losses, rates = _cycles(peak_after=3.0)
    found = _found(LossDivergence(), losses, rates)
    assert found and found[0].kind == "loss_divergence" and 50 < found[0].step < 60


def _knocked(after: float) -> list[float]:
    """A loss falling slowly to 0.75 by record 100, knocked to 1.6 in one record (a head
    re-initialised: under twice the median of the 20 losses before, no new stage of the data),
    then moving ``after`` times a record."""
    losses = [1.8 - 1.05 * t / 100 + 0.02 * (t % 3) for t in range(100)]
    assert 1.6 < STEPPED_UP * statistics.median(losses[-STAGE_BEFORE:])
    return losses + [1.6 * after**t * (1 + 0.02 * (t % 3)) for t in range(60)]


def test_a_loss_knocked_up_in_one_step_diverges_only_once_it_climbs_on():
    assert _found(LossDivergence(), _knocked(after=0.99)) == []
    found = _found(LossDivergence(), _knocked(after=1.02))
    assert found and found[0].kind == "loss_divergence" and found[0].step > 100


def test_blind_controls_with_a_head_reset_and_warm_restarts_are_told_nothing(tmp_path):
    # set 591's falconry classifier re-initialised its head at step 100 (the loss 0.74 -> 1.86,
    # then down); set 607's classifier restarted its cosine schedule every 50 steps (the loss
    # 0.43 -> 1.16 after the restart at 150). Both warned of a divergence; now nothing
    for name, stepped_at in (
        ("h591_falconry_hood_fit_head_reset_classifier", 100),
        ("h607_didgeridoo_warm_restarts", 150),
    ):
        held_out_run(tmp_path, name)
        run = steadygrad.load(tmp_path / name)
        steps, loss = run.series("loss")
        at = list(steps).index(stepped_at)
        assert max(loss[at : at + 8]) > 2.0 * loss[at - 1]  # the oracle: the bump, by hand
        assert loss[-10:].mean() < loss[:10].mean()  # and it trained
        assert not [f for f in run.findings() if f.severity != "info"], name


def test_units_read_dead_just_after_a_one_step_break_did_not_make_it(tmp_path):
    # set 605's classifier read a penalty weight from the wrong key for step 90: a gradient
    # burst whose update threw the loss 10^4x at step 91. Dead units first read at step 92
    # (the reading before at 84) were ranked first, as units that may have died before the
    # break; units dying make no loss jump: the burst seen before the break comes first
    name = "h605_tennis_penalty_key"
    ctx, report = held_out_run(tmp_path, name)
    induced_or_skip(ctx)
    steps, loss = steadygrad.load(tmp_path / name).series("loss")
    at = list(steps).index(91)
    assert loss[at] >= JUMPED * np.median(loss[at - JUMP_BEFORE : at])  # the oracle, by hand
    assert report.top.cause == "gradient_spike"
    dead = [d for d in report.diagnoses if d.cause == "loss_of_plasticity"]
    assert all(d.confidence == "low" for d in dead)


def test_units_read_dead_just_after_a_climb_may_still_have_come_first(tmp_path):
    # the control: the same cadence (a reading at 84, the next at 92) after a loss that climbed
    # 1.5x a step from 86 to a break at 91, no jump at the break: the units may have come first
    loss = [0.4] * 86 + [0.4 * 1.5**t for t in range(1, 6)] + [3.0] * 20
    rows = [{"loss": x} for x in loss]
    assert loss[91] < JUMPED * np.median(loss[91 - JUMP_BEFORE : 91])
    broke = ("loss_divergence", 91, None, {"ratio": 5.0}, "critical")
    died = ("loss_of_plasticity", 92, "fc2", {"previous_reading": 84}, "warning")
    report = diagnose_stored(tmp_path, "climbed", rows, [broke, died])
    assert report.top.cause == "loss_of_plasticity" and report.top.confidence == "medium"
