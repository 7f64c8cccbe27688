"""Run shapes from the twenty-fifth session's held-out sets (92-94) and what they showed.

Each change has a trigger that fails on the code before it and a control that must not move."""

from __future__ import annotations

import torch
from helpers import induced_report
from torch import nn

import steadygrad
from steadygrad.diagnose import rules


def test_fp16_overflow_that_stalls_training_is_named_before_what_its_skips_look_like(tmp_path):
    # Trigger: set 94's DLRM, whose history bags overflow float16 from step ~100: the
    # GradScaler skips 60% of the steps. Skipped steps update nothing, which read as updates
    # damped to 0 (a "poisoned second moment"); the gradients were at float16's edge as they
    # grew. The stall is dated from its first skipped step, before the loss climbed.
    report = induced_report(tmp_path, "h94_dlrm_history_bags_fp16")
    first = report.diagnoses[0]
    assert first.cause == "amp_overflow" and first.severity == "critical"
    assert "interact" in first.where
    assert "adam_second_moment_poisoned" not in [d.cause for d in report.diagnoses]
    growth = next(d for d in report.diagnoses if d.cause == "exploding_gradients")
    assert "float16" in growth.consequence_of


def test_a_climb_from_weights_the_optimizer_threw_is_its_consequence(tmp_path):
    # Trigger: set 93's Koopman autoencoder, whose schedule raised the rate 3000x for one step
    # at 150: the update moved the weights 1e4x their usual step on an ordinary gradient, and
    # the loss climbed from where they landed. The climb is that update's consequence.
    report = induced_report(tmp_path, "h93_koopman_lr_restart_glitch")
    climb = next(d for d in report.diagnoses if d.cause == "loss_divergence")
    assert "threw" in climb.consequence_of


def _raised_rate_run(tmp_path, steps_raised: int):
    """An MLP regression under SGD at 0.05 whose rate is raised 40x at step 100 for
    ``steps_raised`` steps, then put back: what the raised-rate check of the sharpness rule
    finds in it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(512, 8, generator=gen)
    y = torch.sin(x.sum(dim=1, keepdim=True))
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        for step in range(200):
            opt.param_groups[0]["lr"] = 2.0 if 100 <= step < 100 + steps_raised else 0.05
            idx = torch.randint(0, 512, (64,), generator=gen)
            loss = nn.functional.mse_loss(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(loss)
    run = steadygrad.load(tmp_path / "run")
    jolted = [f.step for f in run.findings() if f.kind == "loss_spike"]
    return jolted, rules._lr_raised_into_a_jolt(rules.RunFacts(run))


def test_a_rate_raised_and_kept_is_still_above_the_limit(tmp_path):
    # Control: the same raise, kept for the rest of the run.
    jolted, found = _raised_rate_run(tmp_path, steps_raised=100)
    assert jolted and found is not None
    assert found.first_step == 100 and found.evidence["lr_after"] == 2.0


def test_a_rate_raised_for_two_steps_then_put_back_is_a_glitch_not_a_rate_above_the_limit(
    tmp_path,
):
    # Trigger (sets 93, 109 and 112: a rate typed wrong for a few steps, a one-step override):
    # the raise jolted the run, and the rate was back two steps later. The run never trained at
    # that rate: the jolt is a loss spike the glitch made, named with it; "lower the learning
    # rate" would be the wrong fix.
    jolted, found = _raised_rate_run(tmp_path, steps_raised=2)
    assert jolted and 100 <= jolted[0] <= 110  # the raise jolted the run
    assert found is None
    report = steadygrad.diagnose(tmp_path / "run")
    assert report.top.cause == "loss_spike"
    assert "raised 4x or more at a stroke at step 100" in report.top.summary
    assert "glitch of the schedule" in report.top.summary
    assert "sharpness_above_limit" not in report.causes()
