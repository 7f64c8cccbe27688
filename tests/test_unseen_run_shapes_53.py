"""Run shapes from the fifty-third session.

Each change has a trigger (a held-out scenario it was found on, or a loop written here) and a
control that must not move."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import diagnose_stored, induced_report, steadygrad


def _stride_by_hand(run_dir) -> float:
    """The norm of all the weights' growth a step over the second half of its record, over
    ``lr * sqrt(count)``: the most an Adam-type step moves ``count`` weights."""
    run = steadygrad.load(run_dir)
    steps, norms = run.series("param_norm")
    ok = np.isfinite(norms)
    steps, norms = steps[ok].astype(float), norms[ok]
    half = len(norms) // 2
    at, lr = run.series("lr/0")
    rate = float(np.median(lr[at >= steps[half]]))
    slope = np.polyfit(steps[half:], norms[half:], 1)[0]
    return slope / (rate * math.sqrt(run.config["parameters"]))


@pytest.mark.parametrize("name", ["h483_gobelin_l2_sign", "h173_beehive_tare_drift"])
def test_gradients_that_grew_with_weights_pushed_at_adams_full_stride_follow_them(tmp_path, name):
    # Set 483's L2 penalty subtracted under AdamW, set 173's targets drifting a little further
    # every step under Adam: every weight moves its learning rate one way every step, the norm
    # of all of them growing by about lr * sqrt(count) a step; the gradients grow with the
    # weights and the loss climbs. Named the climb, the gradient growth its consequence, not
    # exploding gradients
    report = induced_report(tmp_path, name)
    assert report.top.cause == "loss_divergence"
    grown = next(d for d in report.diagnoses if d.cause == "exploding_gradients")
    assert "full stride" in grown.consequence_of
    share = _stride_by_hand(tmp_path / name)
    assert share > 0.5  # the oracle: over half the full stride, from the stored series
    assert grown.evidence["pushed_stride"] == pytest.approx(share, rel=1e-6)


def test_gradients_exploding_through_depth_under_adam_are_not_a_push(tmp_path):
    # Control: a controller trained through a mass-spring simulator whose explicit-Euler time
    # step is past its stability limit, under RAdam: the gradients explode through time, and
    # the weights' norm moves at a hundredth of the full stride (an explosion's bounded updates
    # go every way): still exploding gradients
    name = "h370_hammock_euler_dt_typo"
    report = induced_report(tmp_path, name)
    assert report.top.cause == "exploding_gradients"
    assert abs(_stride_by_hand(tmp_path / name)) < 0.1


def _moved_over_reach(run_dir, step: int, reach: float) -> float:
    """How far the norm of all the weights moved into ``step``, over ``reach * lr * sqrt(count)``:
    the most ``count`` weights move in one step of an optimizer that moves each by ``reach``
    learning rates at most."""
    run = steadygrad.load(run_dir)
    steps, norms = run.series("param_norm")
    at, lr = run.series("lr/0")
    moved = abs(float(norms[steps == step][0] - norms[steps == step - 1][0]))
    return moved / (reach * float(lr[at == step][0]) * math.sqrt(run.config["parameters"]))


@pytest.mark.parametrize(
    "name, step, cause",
    [
        ("h488_camogie_weight_noise_resume", 150, "loss_spike"),
        ("h487_bog_oak_raw_counts", 100, "data_outlier"),
    ],
)
def test_weights_moved_further_than_any_step_reaches_were_put_there(tmp_path, name, step, cause):
    # RMSprop moves a weight by at most lr / sqrt(1 - alpha) in one step (10 rates at alpha
    # 0.99; twice that, the margin): the norm of N weights by 20 * lr * sqrt(N). Trigger: set
    # 488's weight noise typed 0.1 for 0.001 on resume moved the norm from 6.2 to 8.2 in one
    # step, with a gradient 4x its usual: further than any step reaches, so the weights were
    # put there, and the loss spike is named (not one batch's outlier). Control: set 487's
    # shard in raw counts, whose gradient was far larger, moved them within reach: the batch
    reach = 2 / math.sqrt(1 - 0.99)
    report = induced_report(tmp_path, name)
    assert report.top.cause == cause
    moved = _moved_over_reach(tmp_path / name, step, reach)
    if cause == "loss_spike":
        assert moved > 1
        assert "replaced" in report.top.summary
    else:
        assert moved < 1


def test_a_rate_still_rising_from_a_climb_into_its_break_is_judged_by_the_whole_rise(tmp_path):
    # Set 495's one-cycle peak typed 6.0 for 0.6: the loss began to climb at step 9, when the
    # rate had risen 1.49x (under the 1.5x a rise into a climb needs), and the run broke at
    # step 20 with the rate still rising, 3.3x where it began: the step size outgrew the
    # curvature, not one batch
    name = "h495_ironing_crease_onecycle"
    report = induced_report(tmp_path, name)
    assert report.top.cause == "sharpness_above_limit"
    run = steadygrad.load(tmp_path / name)
    climbs = [f.step for f in run.findings() if f.kind == "loss_divergence"]
    broke = next(
        f.step for f in run.findings() if f.kind == "loss_divergence" and f.severity == "critical"
    )
    at, lr = run.series("lr/0")
    assert lr[at == climbs[0]][0] / lr[0] < 1.5 <= lr[at == broke][0] / lr[0]


@pytest.mark.parametrize("held", [False, True])
def test_a_rate_that_stopped_rising_at_the_climb_is_not_the_break(tmp_path, held):
    # Control (hand-written run): the loss climbs from step 40 and breaks at step 60. The rate
    # rose 1.4x by the climb; rising on to 3x by the break it is named (the trigger's shape),
    # held from the climb on (a warm-up that ended) it is not what broke the run
    rows = []
    for t in range(70):
        rate = 0.1 * (1 + 0.4 * min(t, 40) / 40 + (0 if held else 1.6 * max(t - 40, 0) / 20))
        loss = 1.0 / (1 + t / 10) if t < 40 else 0.2 * 1.3 ** (t - 40)
        rows.append({"loss": loss, "lr/0": rate})
    findings = [
        ("loss_divergence", 40, None, {"best_level": 0.2, "best_level_step": 39}, "warning"),
        ("loss_divergence", 60, None, {"best_level": 0.2, "ratio": 190.0}, "critical"),
    ]
    report = diagnose_stored(tmp_path, str(held), rows, findings)
    named = [d.cause for d in report.diagnoses]
    assert ("sharpness_above_limit" in named) is not held


@pytest.mark.parametrize("margin", [1000.0, 1.0])
def test_a_multi_class_hinge_hands_over_its_scores(tmp_path, margin):
    # nn.MultiMarginLoss's scores are the model's output as cross-entropy's logits are: their
    # scale recorded from the loss call (the oracle: the largest score of the recorded step,
    # computed here). Trigger: set 498's margin typed 1000 for 1, every row inside it, the head
    # pushing the scores apart without end: output-logit divergence at the head. Control: the
    # margin meant, met: quiet
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(3)
    centres = torch.randn(4, 8, generator=g) * 2
    largest = {}
    with steadygrad.Monitor(model, opt, tmp_path / "run") as mon:
        for step in range(200):
            y = torch.randint(0, 4, (64,), generator=g)
            scores = model(centres[y] + torch.randn(64, 8, generator=g))
            largest[step] = float(scores.detach().abs().max())
            loss = torch.nn.MultiMarginLoss(margin=margin)(scores, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(float(loss))
    run = steadygrad.load(tmp_path / "run")
    steps, recorded = run.series("output_logit_max")
    assert recorded[-1] == pytest.approx(largest[int(steps[-1])], rel=1e-5)
    report = steadygrad.diagnose(tmp_path / "run")
    if margin > 1:
        assert report.top.cause == "output_logit_divergence"
        assert report.top.where == ["2"]
    else:
        assert not [f for f in run.findings() if f.severity != "info"]
        assert report.healthy


def test_a_warm_up_that_meets_an_amplifying_init_names_the_init(tmp_path):
    # Set 501's twelve ReLU layers with the ReLU gain applied twice, under a geometric warm-up
    # from 1e-6: the run broke at a rate the standard initialisation trains at, the rate still
    # rising. The layers amplified the signal from the first step (the oracle: each layer's
    # output at step 0 at least 1.2x the one before, read from the stored series), so the
    # init is named, where it starts, and the rising rate is its consequence. (Control: set
    # 495's one-cycle peak on a standard init stays the rate, above.)
    name = "h501_kettlebell_double_gain"
    report = induced_report(tmp_path, name)
    assert report.top.cause == "exploding_gradients"
    assert report.top.where[0] == "layers.0"
    rate = next(d for d in report.diagnoses if d.cause == "sharpness_above_limit")
    assert "exploded from the first step" in rate.consequence_of
    run = steadygrad.load(tmp_path / name)
    outputs = [float(run.series(f"act_rms/layers.{i}")[1][0]) for i in range(12)]
    assert all(b >= 1.2 * a for a, b in zip(outputs, outputs[1:], strict=False))
