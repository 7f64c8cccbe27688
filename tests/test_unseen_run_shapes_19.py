"""Run shapes from the twenty-third session's held-out sets (84-86) and what they showed.

Each change has a trigger that fails on the code before it and a control that must not move."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import induced_report
from torch import nn

import steadygrad


def _gaussian_nll_run(tmp_path, name, bad_at=None, steps=220):
    """A regressor of a mean and a log-scale trained by its Gaussian negative log-likelihood,
    which falls below zero as the fit tightens; at ``bad_at`` four targets come in other units
    (x1000)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    losses = []
    with steadygrad.watch(model, opt, tmp_path / name, progress=False) as mon:
        for step in range(steps):
            x = torch.rand(64, 1, generator=gen) * 4 - 2
            y = torch.sin(x) + 0.05 * torch.randn(64, 1, generator=gen)
            if step == bad_at:
                y[:4] *= 1000.0
            mean, log_std = model(x).chunk(2, dim=1)
            loss = (log_std + 0.5 * ((y - mean) / log_std.exp()) ** 2).mean()
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
            losses.append(float(loss))
    return steadygrad.load(tmp_path / name), losses


@pytest.mark.parametrize("bad_at", [150, None])
def test_a_loss_spike_from_below_zero_is_found(tmp_path, bad_at):
    # Trigger: set 86's behaviour-cloning policy. A likelihood's negative log falls below
    # zero; the spike detector asked a spike to be a multiple of its baseline, and a negative
    # baseline has none: a jump from -2.2 to 1.6e6 went unseen. Control: the same run clean.
    run, losses = _gaussian_nll_run(tmp_path, f"nll-{bad_at}", bad_at)
    assert max(losses[100:150]) < 0  # the oracle: the baseline is below zero
    spikes = [f.step for f in run.findings() if f.kind == "loss_spike"]
    if bad_at is None:
        assert spikes == []
        return
    assert losses[bad_at] > 100 and spikes == [bad_at]
    assert "ratio" not in next(f for f in run.findings() if f.kind == "loss_spike").evidence
    outlier = [d for d in steadygrad.diagnose(run).diagnoses if d.cause == "data_outlier"]
    assert (
        outlier and outlier[0].first_step == bad_at and "from a baseline of" in outlier[0].summary
    )


@pytest.mark.parametrize("name", ["h84_qwen3next_resume_restart", "h86_bbb_resume_reset"])
def test_a_resume_that_restarted_optimizer_and_schedule_is_its_jolt(tmp_path, name):
    # Trigger: a job resumed with the weights but a fresh optimizer and its schedule back at
    # the peak. The rate rose 10-500x at the step the state was lost: the steps that crossed
    # 2/sharpness were the restart's, which the writers (and the fix: load both states) name.
    report = induced_report(tmp_path, name)
    assert report.top.cause == "loss_spike"
    sharp = [d for d in report.diagnoses if d.cause == "sharpness_above_limit"]
    assert all("started again from nothing" in d.why for d in sharp)


def test_a_rate_raised_with_no_restart_is_above_the_limit(tmp_path):
    # Control: set 81's DeepONet warm-up typo raises the rate by hand, the optimizer's state
    # intact: the rate is the cause.
    report = induced_report(tmp_path, "h81_sharpness_deeponet_warmup_typo")
    assert report.top.cause == "sharpness_above_limit"


@pytest.mark.parametrize(
    ("name", "cause"),
    [
        ("h84_dien_fp16_exp_overflow", "amp_overflow"),
        ("h85_jasper_grad_scale_typo", "gradient_spike"),
    ],
)
def test_a_gradient_spike_among_the_scalers_skips_is_the_overflow(tmp_path, name, cause):
    # Trigger: set 84's DIEN, whose hand-written fp16 softmax overflows more and more often: a
    # bias's gradient spiked a step before the GradScaler skipped one, and was named before
    # the overflow that stalled the run. Control: set 85's Jasper, a spike with no skips.
    report = induced_report(tmp_path, name)
    assert report.top.cause == cause


def test_a_pause_in_an_experts_routing_is_no_frozen_layer(tmp_path):
    # Trigger: set 86's Switch transformer. One expert got no token from step 10 to 60 (no
    # gradient at all, its update ratio 0: found frozen at its third reading), then learnt
    # again to the end: a pause in its routing, which many a healthy mixture has.
    report = induced_report(tmp_path, "h86_switch_reverse_healthy")
    run = steadygrad.load(tmp_path / "h86_switch_reverse_healthy")
    frozen = [f for f in run.findings() if f.evidence.get("direction") == "frozen"]
    assert frozen and all("experts" in f.where for f in frozen)
    assert report.top is None  # nothing to diagnose


def test_a_layer_whose_gradient_is_exactly_zero_for_good_cannot_learn(tmp_path):
    # Trigger: set 85's QuartzNet, whose residual conv gets frames masked to zeros: its batch
    # norm's scale has a gradient of exactly 0 from the start to the end. No setting does
    # that (a rate of 0 keeps the gradient, requires_grad=False removes it).
    report = induced_report(tmp_path, "h85_quartznet_silence_mask_units")
    assert report.top.cause == "loss_of_plasticity"
    assert report.top.where == ["blocks.2.res_bn"]


def test_a_layer_frozen_by_a_rate_of_zero_is_out_of_range(tmp_path):
    # Control: a stage given a learning rate of 0 keeps its gradient: frozen by a setting.
    report = induced_report(tmp_path, "h14_cvt_stage_lr_zero")
    assert report.top.cause == "update_ratio_out_of_range"
    assert math.isfinite(report.top.first_step)


@pytest.mark.parametrize(
    ("name", "cause"),
    [
        ("h86_mdn_irnn_exploding", "exploding_gradients"),
        ("h46_tree_lstm_gradient_noise_slip", "gradient_spike"),
    ],
)
def test_bursts_of_a_recurrence_that_then_overflowed_are_its_explosion(tmp_path, name, cause):
    # Trigger: set 86's IRNN mixture-density net. Its gradient burst 30-50x at steps 186 and
    # 229, came back each time, and at 278 a burst overflowed the recurrence: one series of
    # cliffs (Pascanu et al. 2013), the first of them a gradient spike named before the
    # explosion. Control: set 46's tree-LSTM, one spike the run got over.
    report = induced_report(tmp_path, name)
    assert report.top.cause == cause
    if cause == "exploding_gradients":
        assert report.top.first_step < 230  # dated from the first of the bursts
