"""Run shapes the tenth wave's held-out sets showed, each a trigger and a control: a forward
pass overflowing float16 under a GradScaler (the loss itself non-finite, the steps skipped, the
weights finite) against a NaN that reached the weights and one the autopilot skipped; a scaler
that skipped many steps early but none at the end; and gradients that grew while the loss kept
improving in a run that never broke."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import diagnose_stored
from torch import nn

import steadygrad


def _amp_run(tmp_path, name: str, overflow_from: int | None, scaler: bool, pilot=None):
    """A regression MLP trained under float16 autocast (with ``scaler``, else in float32);
    from ``overflow_from`` its inputs come in raw units (x 1e5), so the first Linear's output
    exceeds float16's range (65504); in float32 they carry a NaN instead."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    amp = torch.amp.GradScaler("cpu", init_scale=2.0**10) if scaler else None
    mon = steadygrad.Monitor(
        model, opt, tmp_path / name, progress=False, scaler=amp, autopilot=pilot
    )
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 1, generator=g)
    for step in range(160):
        x = torch.randn(32, 8, generator=g)
        y = x @ w
        if overflow_from is not None and step >= overflow_from:
            x = x * 1e5 if scaler else x.index_fill(0, torch.tensor([0]), float("nan"))
        with torch.autocast("cpu", dtype=torch.float16, enabled=scaler):
            loss = nn.functional.mse_loss(model(x).float(), y)
        if amp is not None:
            amp.scale(loss).backward()
            amp.step(opt)
            amp.update()
        else:
            loss.backward()
            opt.step()
        mon.step(loss)
        opt.zero_grad()
    mon.close()
    finite = all(torch.isfinite(p).all() for p in model.parameters())
    return steadygrad.diagnose(tmp_path / name), finite


def test_a_forward_pass_overflowing_float16_is_named_as_mixed_precision_overflow(tmp_path):
    report, finite = _amp_run(tmp_path, "fp16", overflow_from=100, scaler=True)
    assert finite  # the GradScaler skipped every overflowing step
    top = report.top
    assert top.cause == "amp_overflow" and top.severity == "critical"  # it stalls training
    assert top.first_step == 100 and top.where == ["0"]  # the Linear that overflowed
    assert "loss overflows" in top.summary
    # the non-finite loss is told as its consequence, with its producer
    nonfinite = next(d for d in report.diagnoses if d.cause == "nonfinite")
    assert nonfinite.where == ["0"]


def test_a_nan_that_reached_the_weights_stays_a_non_finite_divergence(tmp_path):
    # a NaN input in float32 with no scaler: the update carries it into the weights, and
    # nothing about mixed precision explains it
    report, finite = _amp_run(tmp_path, "fp32", overflow_from=100, scaler=False)
    assert not finite
    assert "amp_overflow" not in report.causes()


@pytest.mark.parametrize("overflow_from", [None, 100])
def test_steps_the_autopilot_skipped_are_no_mixed_precision_overflow(tmp_path, overflow_from):
    # no GradScaler: the autopilot's skip keeps the weights finite, as a scaler would, but
    # the run has no float16 to overflow
    pilot = steadygrad.Autopilot(snapshot_every=10, snapshot_dir=tmp_path / "snap")
    report, _ = _amp_run(tmp_path, f"pilot{overflow_from}", overflow_from, False, pilot)
    assert "amp_overflow" not in report.causes()
    if overflow_from is not None:
        assert report.causes()[0] == "nonfinite"


def _scaler_run(tmp_path, name: str, overflowing) -> steadygrad.Report:
    """A regression MLP under a GradScaler whose gradients overflow at ``overflowing(step)``
    (the scaled loss times inf: no scale the scaler reaches brings them back)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    mon = steadygrad.Monitor(model, opt, tmp_path / name, progress=False, scaler=scaler)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 1, generator=g)
    for step in range(120):
        x = torch.randn(32, 8, generator=g)
        loss = nn.functional.mse_loss(model(x), x @ w)
        scaler.scale(loss * (math.inf if overflowing(step) else 1.0)).backward()
        scaler.step(opt)
        scaler.update()
        mon.step(loss)
        opt.zero_grad()
    mon.close()
    return steadygrad.diagnose(tmp_path / name)


def test_a_scaler_skipping_every_late_step_stalls_training(tmp_path):
    report = _scaler_run(tmp_path, "late", lambda step: step >= 90)
    assert report.top.cause == "amp_overflow" and report.top.severity == "critical"
    assert "including the last 20" in report.top.summary


def test_skipped_steps_early_in_a_run_that_then_trained_do_not_stall_it(tmp_path):
    # 30 skipped steps at the start, none in the last 90: the skipped series holds an entry per
    # skipped step, so its last 20 entries are not the run's last 20 steps
    report = _scaler_run(tmp_path, "early", lambda step: step < 30)
    amp = next(d for d in report.diagnoses if d.cause == "amp_overflow")
    assert amp.severity != "critical" and "stalling" not in amp.summary


@pytest.mark.parametrize("loss_after", ["kept_improving", "flat"])
def test_gradients_that_grew_as_the_loss_kept_improving_are_no_explosion(tmp_path, loss_after):
    # a classifier fine-tuned to a near-zero loss: its gradient norm grows 25x from step 60 as
    # its logits sharpen, and the loss keeps falling for 100 steps; nothing breaks. Control: the
    # same growth while the loss stays where it was (a deep tanh net whose gradients explode
    # and learn nothing): that is exploding gradients, stalling the run
    rows = []
    for t in range(200):
        fall = 0.7 * math.exp(-t / 40) if loss_after == "kept_improving" else 0.7
        rows.append({"loss": 0.02 + fall + 0.01 * math.sin(t), "grad_norm": 0.1 * (1 + t / 8)})
    growth = ("gradient_growth", 60, "encoder.norm.bias", {"growth": 25.0}, "warning")
    report = diagnose_stored(tmp_path, loss_after, rows, [growth])
    exploding = next(d for d in report.diagnoses if d.cause == "exploding_gradients")
    if loss_after == "kept_improving":
        assert exploding.severity == "info" and report.healthy
        assert "grew as the model learned" in exploding.summary
    else:
        assert exploding.severity == "warning" and report.top is exploding


@pytest.mark.parametrize("loss_to", [-6.0, 0.05])
def test_logits_rewarded_by_a_loss_below_zero_are_not_earned(loss_to):
    # label smoothing written with the wrong sign: the loss rewards spreading the logits and
    # falls below zero while log Z climbs 2.3 -> 18 (TextNet). Control: a classifier growing
    # confident, whose cross-entropy falls to 0.05 as log Z climbs the same way
    from steadygrad.core import Record
    from steadygrad.diagnose.detectors.transformer import OutputLogitDivergence

    detector, found = OutputLogitDivergence(), []
    for i in range(11):
        step = 25 * i
        lse = 2.3 + 15.7 * (i / 10) ** 2
        loss = 2.3 + (loss_to - 2.3) * i / 10
        found += detector.update(Record(step, {"logit_lse_mean": lse, "loss": loss}))
    if loss_to < 0:
        assert found and found[0].severity == "warning"
    else:
        assert not found


@pytest.mark.parametrize("loss_to", [3.3, 0.3])
def test_logits_climbing_steadily_without_progress_are_warned_early(loss_to):
    # a z-loss subtracted instead of added (Doge): log Z climbs from log(128) = 4.85 by about
    # 0.9 nats a reading, never accelerating and never reaching half the limit, while the loss
    # stalls at 3.3. Control: the same climb in a language model whose loss falls to 0.3
    from steadygrad.core import Record
    from steadygrad.diagnose.detectors.transformer import OutputLogitDivergence

    detector, found = OutputLogitDivergence(), []
    for i in range(12):
        loss = 4.86 + (loss_to - 4.86) * min(i / 3, 1.0)
        values = {"logit_lse_mean": 4.86 + 0.82 * i, "loss": loss}
        found += detector.update(Record(25 * i, values))
    if loss_to > 1.0:
        assert [f.step for f in found][:1] == [25 * 7]  # 5.7 nats up, the 7th rise in a row
    else:
        assert not found


@pytest.mark.parametrize("after_spike", ["compounds", "absorbed"])
def test_a_gradient_spike_that_compounds_into_nan_is_an_explosion(tmp_path, after_spike):
    # an ODE-RNN whose solver meets gaps 10x longer from step 100: the gradient norm spikes
    # 1456x, the loss climbs at every step (3.9, 8.9e8) and is NaN at 103. Control: the same
    # spike, after which the loss came back down before a NaN from elsewhere
    rows = []
    for t in range(110):
        loss = 0.05
        if t >= 100:
            rising = {100: 3.9, 101: 4.0e4, 102: 8.9e8}
            loss = rising.get(t, math.nan) if after_spike == "compounds" else 0.06
            if after_spike == "absorbed" and t == 100:
                loss = 3.9
            if after_spike == "absorbed" and t >= 103:
                loss = math.nan
        rows.append({"loss": loss})
    findings = [
        ("grad_norm_spike", 100, None, {"ratio": 1456.0}, "warning"),
        ("gradient_spike", 100, "odefunc.net.2.weight", {"spike_factor": 3935.0}, "critical"),
        ("gradient_spike", 100, "odefunc.net.0.weight", {"spike_factor": 5090.0}, "critical"),
        ("loss_divergence", 100, None, {"ratio": 116.0}, "critical"),
        ("nonfinite", 103, "odefunc.net.0", {"loss": math.nan}, "critical"),
    ]
    report = diagnose_stored(tmp_path, after_spike, rows, findings)
    if after_spike == "compounds":
        assert report.top.cause == "exploding_gradients"
        assert report.top.where[:2] == ["odefunc.net.0.weight", "odefunc.net.2.weight"]
    else:
        assert "exploding_gradients" not in report.causes()


@pytest.mark.parametrize("producer", [None, "time_enc"])
def test_a_producer_that_cannot_be_known_is_said_so_not_named_none(tmp_path, producer):
    # a temporal graph net's log of a zero time gap: the NaN update reached the weights before
    # the forward guard looked, so the replay cannot name the first producer. Control: a guard
    # that found it names it
    origin = {"module": producer}
    if producer is None:
        origin.update(
            note="unknown: time_enc.freq's own weights were already non-finite",
            corrupted_module="time_enc.freq",
        )
    rows = [{"loss": 0.5 if t < 170 else math.nan} for t in range(180)]
    findings = [
        ("nonfinite", 170, None, {"loss": math.nan, "nonfinite_params": 1009.0}, "critical"),
        ("nonfinite_origin", 171, producer, {"forward_origin": origin}, "critical"),
    ]
    nonfinite = diagnose_stored(tmp_path, str(producer), rows, findings).top
    assert nonfinite.cause == "nonfinite"
    if producer is None:
        assert nonfinite.where == [] and "already non-finite" in nonfinite.summary
    else:
        assert nonfinite.where == ["time_enc"]


@pytest.mark.parametrize("rate", ["served_long", "just_raised"])
def test_an_overshoot_at_a_rate_the_run_trained_at_for_long_is_not_the_rate(tmp_path, rate):
    # a MuZero-style dynamics model trained 130 steps at lr 0.05; its unroll grows from step
    # 100 and the run breaks at 131, an update just before overshooting 5x along its direction:
    # explosions end so, and the rate had served for 125 steps. Control: the
    # same break 10 steps after the rate was raised 10x (a resume with the wrong rate)
    rows = []
    for t in range(140):
        lr = 0.05 if rate == "served_long" or t < 121 else 0.5
        loss = 0.08 if t < 125 else 0.08 * 3 ** (t - 124)
        row = {"loss": loss if t < 135 else math.nan, "lr/group0": lr}
        if t % 4 == 1:
            row["directional_sharpness_ratio"] = 5.0 if t == 125 else 0.6
        rows.append(row)
    findings = [
        ("loss_divergence", 127, None, {"ratio": 5.0}, "warning"),
        ("loss_divergence", 131, None, {"ratio": 80.0}, "critical"),
        ("nonfinite", 135, None, {"loss": math.nan}, "critical"),
    ]
    report = diagnose_stored(tmp_path, rate, rows, findings)
    sharpness = [d for d in report.diagnoses if d.cause == "sharpness_above_limit"]
    if rate == "served_long":
        assert not sharpness
    else:
        assert report.top is sharpness[0]


@pytest.mark.parametrize("rate", [0.06, 0.012])
def test_a_weight_compounding_tenfold_runs_away_while_the_loss_improves(tmp_path, rate):
    # a ByteNet block whose max-norm constraint is written upside down: its conv weight grows
    # 6% a step from step 80 (1e5x by the break at 266) while the loss still creeps down, and
    # its units die on the way (180). Control: 1.2% a step (2.6x over the last 80 steps), a
    # growth a learnt direction can make while the loss improves: no runaway is read
    rows = []
    for t in range(270):
        loss = 2.9 - 0.003 * t if t < 262 else (30.0 if t < 266 else math.nan)
        grown = 2.8 * math.exp(rate * max(min(t, 261) - 80, 0))
        rows.append(
            {
                "loss": loss,
                "param_norm/blocks.2.conv.weight": grown,
                "param_norm/blocks.1.conv.weight": 2.8,
                "param_norm/out.weight": 3.0,
            }
        )
    findings = [
        ("loss_of_plasticity", 180, "blocks.2.reduce", {"reason": "dead_units"}, "warning"),
        ("gradient_growth", 264, "blocks.2.reduce.bias", {"growth": 141.0}, "critical"),
        ("loss_divergence", 266, None, {"ratio": 3.7}, "critical"),
        ("nonfinite", 268, "blocks.2.conv", {"loss": math.nan}, "critical"),
    ]
    report = diagnose_stored(tmp_path, str(rate), rows, findings)
    exploding = next(d for d in report.diagnoses if d.cause == "exploding_gradients")
    if rate > 0.05:
        assert report.top is exploding and exploding.where[0] == "blocks.2.conv"
        assert exploding.first_step < 180  # dated to where the runaway began
    else:
        assert "runaway_weights" not in exploding.evidence
