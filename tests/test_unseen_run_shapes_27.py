"""Run shapes from the thirty-first session (held-out sets 105-111's misses, and a schedule-free
optimizer).

Each change has a trigger that fails on the code before it and a control that must not move."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import diagnose_stored, train

import steadygrad


def _targets_shifted(tmp_path, lasting: bool):
    """A regression MLP under SGD with momentum whose targets are multiplied by 30 from step 60
    (``lasting``: a bug in a new target path, set 105's radiance cache, and they drift on
    upwards) or at step 60 alone (one corrupted batch)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    weights = torch.randn(8, 1)
    step = [0]

    def batch(_seed=0):
        t = step[0]
        step[0] += 1
        x = torch.randn(32, 8)
        y = torch.tanh(x @ weights)
        if (t >= 60 and lasting) or t == 60:
            y = y * 30 * (1 + 0.03 * (t - 60))
        return x, y

    mon = steadygrad.Monitor(model, opt, tmp_path / ("shift" if lasting else "one"), progress=False)
    train(model, opt, mon, 160, batch_fn=batch)
    mon.close()
    return steadygrad.diagnose(tmp_path / ("shift" if lasting else "one"))


def test_a_gradient_that_stepped_up_with_its_loss_and_stayed_is_no_spike(tmp_path):
    # Trigger: the loss of step 60 itself was 30x up (before that step's update moved
    # anything), and neither it nor the gradient norm came back: the first step of a runaway
    # the targets made, which was ranked first as a gradient spike that "came first".
    # Since the fifty-fifth session's StageWatch: the loss, 4,000x up after an ordinary update,
    # held that new level (it fell 5x over the next ten steps as the model refitted): a new
    # stage of the data, told at info with the spike its first batch's gradient made
    report = _targets_shifted(tmp_path, lasting=True)
    spike = next(d for d in report.diagnoses if d.cause == "gradient_spike")
    assert "before that step's update" in spike.why
    assert spike.severity == "info" and "a new stage of the data" in spike.summary
    assert all(d.severity == "info" for d in report.diagnoses)
    # Control: one corrupted batch, after which the loss and the gradient came back.
    report = _targets_shifted(tmp_path, lasting=False)
    spike = next(d for d in report.diagnoses if d.cause == "gradient_spike")
    assert "before that step's update" not in spike.why


def test_a_schedule_free_optimizers_shrinking_steps_are_no_poisoned_moment(tmp_path):
    # Control: a healthy schedule-free AdamW run (Defazio et al. 2024, the schedulefree
    # package). The weights it trains with are an average of its iterates, whose steps shrink
    # to about 1 - beta1 of the base step as the average grows: after an early gradient burst
    # that shrinkage was read as a second moment poisoned by it (updates "at 11%").
    schedulefree = pytest.importorskip("schedulefree")
    torch.manual_seed(0)
    teacher = torch.randn(4, 16)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    opt = schedulefree.AdamWScheduleFree(model.parameters(), lr=1e-2, warmup_steps=20)
    mon = steadygrad.Monitor(model, opt, tmp_path / "sf", progress=False)
    for step in range(300):
        model.train()
        opt.train()
        x = torch.randn(64, 16)
        loss = torch.nn.functional.cross_entropy(model(x), (x @ teacher.t()).argmax(1))
        loss.backward()
        opt.step()
        mon.step(loss)
        opt.zero_grad()
        if step % 50 == 49:  # an evaluation, in the averaged weights
            model.eval()
            opt.eval()
    mon.close()
    assert loss.item() < 0.3  # it trained
    run = steadygrad.load(tmp_path / "sf")
    assert run.config["averages_iterates"] is True
    _, ratios = run.series("update_ratio/0.weight")
    assert ratios[-1] < 0.3 * ratios[1:4].max()  # the steps did shrink
    causes = [d.cause for d in steadygrad.diagnose(tmp_path / "sf").diagnoses]
    assert "adam_second_moment_poisoned" not in causes


def _collapse_after_a_spike(tmp_path, name: str, spike_at: int, collapsed_before: float):
    """Set 108's SegNet, by hand: one step's loss summed over pixels (a 60x gradient) at
    ``spike_at``; the softmax-collapse share read every 25 steps (``collapsed_before`` at step
    75), then every step from 91, when the Monitor looked closer."""
    rows = []
    for t in range(130):
        row = {"loss": 0.08, "grad_norm": 60.0 if t == spike_at else 1.0, "lr/0": 0.01}
        if t % 25 == 0 or 91 <= t <= 107:
            row["softmax_collapse"] = 0.0 if t < 75 else collapsed_before if t == 75 else 0.2
        rows.append(row)
    findings = [
        ("grad_norm_spike", spike_at, None, {"grad_norm": 60.0, "ratio": 60.0}, "warning"),
        ("softmax_collapse", 93, "classifier", {"softmax_collapse": 0.2}, "warning"),
    ]
    return diagnose_stored(tmp_path, name, rows, findings)


def test_rows_that_collapsed_the_step_after_a_gradient_spike_were_thrown_by_it(tmp_path):
    # Trigger: none collapsed at step 75, the spike at 90, rows collapsed from 91: the spike's
    # update threw the classifier's logits (ranked first, as a mechanism, before).
    report = _collapse_after_a_spike(tmp_path, "thrown", 90, 0.0)
    collapse = next(d for d in report.diagnoses if d.cause == "softmax_collapse")
    assert "threw the logits" in collapse.why
    assert report.diagnoses[0].cause == "gradient_spike"
    # Controls: the spike thirty steps before the rows collapsed; rows already collapsing at
    # step 75, before the spike.
    for name, spike_at, before in (("early", 60, 0.0), ("already", 90, 0.05)):
        report = _collapse_after_a_spike(tmp_path, name, spike_at, before)
        collapse = next(d for d in report.diagnoses if d.cause == "softmax_collapse")
        assert "threw the logits" not in collapse.why
        assert report.diagnoses[0].cause == "softmax_collapse"


def _after_a_summed_step(tmp_path, name: str, logits_read_at: int, after: list[float]):
    """Set 109's SAM3 ViT, by hand: one step's loss summed over 12 micro-batches (a 40x
    gradient at step 120), the gradient norm ``after`` it, the head's log-partition read at
    ``logits_read_at`` and then at 122, high, and a growth finding at 125 against an early low;
    the loss up for ten steps after the spike."""
    norms = [1.0] * 120 + after + [6.0] * (30 - len(after))
    losses = [1.5] * 121 + [14.6, 13.8, 10.8, 6.7, 5.1, 5.0, 5.0, 4.9, 3.7] + [3.0] * 20
    rows = [{"loss": x, "grad_norm": g} for x, g in zip(losses, norms, strict=True)]
    findings = [
        ("grad_norm_spike", 120, None, {"grad_norm": 40.0, "ratio": 40.0}, "warning"),
        ("loss_spike", 121, None, {"loss": 14.0, "baseline": 1.5, "ratio": 9.3}, "warning"),
        (
            "output_logit_divergence",
            122,
            "head",
            {"logit_lse_mean": 13.2, "initial": 2.4, "previous_reading": logits_read_at},
            "warning",
        ),
        (
            "gradient_growth",
            125,
            "vit.layer_norm.weight",
            {"grad_norm_median": 12.9, "best_level": 0.58, "growth": 22.3, "best_level_step": 21},
            "warning",
        ),
    ]
    return diagnose_stored(tmp_path, name, rows, findings)


def test_what_a_spikes_update_threw_is_its_aftermath_not_a_cause(tmp_path):
    # Trigger: the logits were in range at step 100, drifted at 122 (read two steps after the
    # spike), and the gradient norm fell from the spike's 40 to 6 by the growth finding: the
    # logits' drift and the "growth" ranked above the spike that made them.
    report = _after_a_summed_step(tmp_path, "thrown", 100, [40.0, 18.0, 15.0, 12.9, 9.3, 6.0])
    assert report.diagnoses[0].cause == "gradient_spike"
    why = {d.cause: d.why for d in report.diagnoses}
    assert "its update threw them" in why["output_logit_divergence"]
    assert "the spike's aftermath" in why["exploding_gradients"]
    # Control: the logits last read at step 121, already after the spike; the gradient norm
    # growing on from the spike (40, 50, ... 120): neither is the spike's throw.
    report = _after_a_summed_step(tmp_path, "grew", 121, [40.0, 50.0, 65.0, 80.0, 100.0, 120.0])
    why = {d.cause: d.why for d in report.diagnoses}
    assert "threw them" not in why["output_logit_divergence"]
    assert "aftermath" not in why["exploding_gradients"]
    assert report.diagnoses[0].cause != "gradient_spike"


def _spike_then_a_nan(tmp_path, name: str, learnt_past: bool):
    """Set 109's heteroscedastic regressor, by hand: a Gaussian NLL near zero, one gradient
    spike at step 44 (a sample with sigma near 0) after which the loss came back, then the loss
    made NaN at step 104 (log of a negative sigma). ``learnt_past``: the loss went on to a new
    best (-0.6 at step 82) before the NaN; else it stayed above its best before the spike."""
    rows = []
    for t in range(104):
        loss = -0.3 - 0.002 * t if t < 44 else (0.3 if t < 60 else -0.2)
        if learnt_past and 75 <= t <= 90:
            loss = -0.6
        rows.append({"loss": loss, "grad_norm": 115.0 if t == 44 else 2.0})
    rows.append({"loss": math.nan, "grad_norm": 2.0})
    origin = {"module": None, "replayed": True, "note": "made after the model's output"}
    findings = [
        ("grad_norm_spike", 44, None, {"grad_norm": 115.0, "ratio": 78.0}, "warning"),
        ("nonfinite", 104, None, {"loss": math.nan, "forward_origin": origin}, "critical"),
    ]
    return diagnose_stored(tmp_path, name, rows, findings)


def test_a_spike_the_run_then_learnt_past_does_not_explain_a_later_break(tmp_path):
    # Trigger: the loss reached a new best 38 steps after the spike, then the NaN: the spike
    # ranked first as "came first and explains what followed", 60 steps before.
    report = _spike_then_a_nan(tmp_path, "learnt", True)
    assert report.diagnoses[0].cause == "nonfinite"
    spike = next(d for d in report.diagnoses if d.cause == "gradient_spike")
    assert "went on to its best at step" in spike.why
    # Control: after the spike the loss never came back to its best before the NaN.
    report = _spike_then_a_nan(tmp_path, "stuck", False)
    assert report.diagnoses[0].cause == "gradient_spike"


def _two_climbs(tmp_path, name: str, second: bool):
    """Set 111's liquid time-constant net, by hand: the loss climbed from 1.9 (step 2) to 3.1
    early, came back and fell to 0.7 by step 240; with ``second``, it then climbed again from
    step 300 to 2.2 by the end (an L2 penalty of the wrong sign)."""
    rows = []
    for t in range(390):
        if t < 40:
            loss = 1.9 + 1.2 * min(t, 20) / 20
        elif t < 240:
            loss = 3.1 - 2.4 * (t - 40) / 200
        else:
            loss = 0.7 + (1.5 * (t - 300) / 90 if second and t >= 300 else 0.0)
        rows.append({"loss": loss})
    findings = [
        ("loss_divergence", 17, None, {"best_level": 1.9, "best_level_step": 2}, "warning"),
    ]
    if second:
        findings += [
            ("loss_divergence", 320, None, {"best_level": 0.7, "best_level_step": 242}, "warning"),
            (
                "loss_divergence",
                387,
                None,
                {"best_level": 0.7, "best_level_step": 242, "ratio": 3.1},
                "critical",
            ),
        ]
    return diagnose_stored(tmp_path, name, rows, findings)


def test_a_climb_the_loss_came_back_from_and_bettered_is_not_the_one_that_broke_the_run(tmp_path):
    # Trigger: two climbs; the run broke on the second. The diagnosis was dated to the first
    # (step 17, from 1.9) and, the loss ending below 1.9, called "a transient".
    report = _two_climbs(tmp_path, "two", True)
    climb = next(d for d in report.diagnoses if d.cause == "loss_divergence")
    assert climb.first_step == 320 and climb.severity == "critical"
    assert "0.7 (step 242)" in climb.summary and "transient" not in climb.summary
    # Control: one climb the run came back from: still the first one, a transient.
    report = _two_climbs(tmp_path, "one", False)
    climb = next(d for d in report.diagnoses if d.cause == "loss_divergence")
    assert climb.first_step == 17 and "transient" in climb.summary
