"""Diagnosis: each rule's scenario gets that diagnosis first; healthy controls do not."""

import pytest
import torch
from helpers import regression_batch, tiny_mlp
from torch import nn

import steadygrad
from steadygrad.cli import main


def _run(tmp_path, name, opt_fn, steps=120, hook=None, scaler=None, ids=False, **mon_kwargs):
    model = tiny_mlp()
    opt = opt_fn(model.parameters())
    mon = steadygrad.Monitor(
        model, opt, tmp_path / name, progress=False, scaler=scaler, **mon_kwargs
    )
    for i in range(steps):
        x, y = regression_batch(i % 16)
        loss = nn.functional.mse_loss(model(x), y)
        if scaler is None:
            loss.backward()
            if hook:
                hook(i, model)
            opt.step()
        else:
            scaler.scale(loss * (1e3 if i in (40, 80) else 1.0)).backward()
            scaler.step(opt)
            scaler.update()
        mon.step(loss, batch_ids=[10 * i, 10 * i + 1] if ids else None)
        opt.zero_grad()
    mon.close()
    return steadygrad.diagnose(tmp_path / name)


def _sgd(params):
    return torch.optim.SGD(params, lr=0.05)


def _adam(params):
    return torch.optim.Adam(params, lr=3e-3)


def _spike_at(step, factor=1000.0):
    def hook(i, model):
        if i == step:
            for p in model.parameters():
                p.grad.mul_(factor)

    return hook


def test_healthy_run_says_so_with_margins(tmp_path):
    report = _run(tmp_path, "healthy", _adam)
    assert report.healthy and report.diagnoses == []
    assert report.margins["non-finite loss steps"] == 0
    assert "max / median grad norm" in report.margins
    assert "healthy" in report.text()


def test_nan_born_in_a_module_is_diagnosed_first(tmp_path):
    def poison(i, model):
        if i == 60:
            with torch.no_grad():
                model[2].weight[0, 0] = float("nan")

    report = _run(tmp_path, "nan", _sgd, hook=poison)
    top = report.top
    assert top.cause == "nonfinite" and top.severity == "critical"
    assert top.first_step == 60 and top.where == ["2"]  # weights at 60, producer seen at 61
    assert "non-finite values were in the weights" in top.summary
    assert top.summary.endswith("the first non-finite forward output came from 2")
    assert any("Autopilot" in f.code for f in top.fixes)


def test_adam_second_moment_poisoned_by_a_gradient_spike(tmp_path):
    report = _run(tmp_path, "poisoned", _adam, hook=_spike_at(60), update_every=1)
    assert report.top.cause == "adam_second_moment_poisoned"
    assert report.top.first_step == 60
    assert report.top.evidence["update_ratio_after_over_before"] < 0.5
    assert "gradient_spike" in report.causes()
    assert any("SPAM" in f.code for f in report.top.fixes)


def test_sgd_spike_is_a_gradient_spike_not_adam_poisoning(tmp_path):
    report = _run(tmp_path, "sgd_spike", _sgd, hook=_spike_at(60, 50.0), update_every=1, ids=True)
    assert "adam_second_moment_poisoned" not in report.causes()
    spike = next(d for d in report.diagnoses if d.cause == "gradient_spike")
    assert spike.first_step == 60
    assert spike.evidence["batch_ids"] == [600, 601]  # the batch behind the spike, by name


def test_amp_overflow_is_benign_and_told_apart_from_divergence(tmp_path):
    scaler = torch.amp.GradScaler("cpu", init_scale=1e38)
    report = _run(tmp_path, "amp", _sgd, scaler=scaler)
    assert report.causes() == ["amp_overflow"]
    assert report.healthy  # info only
    assert "not a divergence" in report.top.summary


def test_cli_diagnose(tmp_path, capsys):
    _run(tmp_path, "cli", _adam, steps=30)
    assert main(["diagnose", str(tmp_path / "cli")]) == 0
    assert "healthy" in capsys.readouterr().out
    assert main(["diagnose", str(tmp_path / "missing")]) == 1


def test_spike_hidden_by_clipping_is_told_apart(tmp_path):
    def train_and_diagnose(name, clip):
        model = tiny_mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        mon = steadygrad.Monitor(model, opt, tmp_path / name, progress=False)
        for i in range(120):
            x, y = regression_batch(i % 16)
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            if i == 70:
                for p in model.parameters():
                    p.grad.mul_(1000.0)
            pre = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5) if clip else None
            opt.step()
            mon.step(loss, grad_norm_preclip=pre)
            opt.zero_grad()
        mon.close()
        return steadygrad.diagnose(tmp_path / name), steadygrad.load(tmp_path / name)

    hidden, run = train_and_diagnose("clipped", clip=True)
    assert run.series("grad_norm")[1].max() <= 0.5 + 1e-4  # the logged norm looked normal
    spike = next(d for d in hidden.diagnoses if d.cause == "gradient_spike")
    assert spike.first_step == 70 and spike.evidence["hidden_by_clipping"] == 1
    assert "hidden by clipping" in spike.summary
    plain, _ = train_and_diagnose("unclipped", clip=False)
    spike = next(d for d in plain.diagnoses if d.cause == "gradient_spike")
    assert spike.first_step == 70 and "hidden" not in spike.summary


def _planted_run(tmp_path, name, ratio_before_break):
    """A run whose last sharpness probe before a NaN stood at the given share of its limit."""
    from steadygrad.store import RunStore

    store = RunStore(tmp_path / name)
    for step in range(0, 100):
        values = {"loss": 2.0 if step < 90 else float("nan")}
        if step % 20 == 0:
            values["sharpness_limit"] = 10.0
            values["sharpness"] = 10.0 * (ratio_before_break if step == 80 else 0.5)
        store.add_scalars(step, values)
    store.add_findings(
        [steadygrad.Finding("nonfinite", 90, None, {"loss": float("nan")}, "critical")]
    )
    store.close()
    return steadygrad.diagnose(tmp_path / name)


def test_sharpness_at_limit_before_divergence_is_the_mechanism(tmp_path):
    report = _planted_run(tmp_path, "near", 0.92)
    assert report.top.cause == "sharpness_above_limit"
    assert report.top.first_step == 80 and report.top.evidence["ratio"] == pytest.approx(0.92)
    assert report.causes() == ["sharpness_above_limit", "nonfinite"]
    far = _planted_run(tmp_path, "far", 0.5)
    assert far.causes() == ["nonfinite"]


def _overshoot_and_growth(tmp_path, name, overshoot_at, growth_at):
    """A run with unstable-step and gradient-growth findings at the given steps, then a NaN."""
    from steadygrad.store import RunStore

    store = RunStore(tmp_path / name)
    for step in range(0, 40):
        store.add_scalars(step, {"loss": 2.0 if step < 30 else float("nan")})
    store.add_findings(
        [
            steadygrad.Finding("unstable_steps", overshoot_at, None, {"ratio": 9.0}, "warning"),
            steadygrad.Finding("gradient_growth", growth_at, "0.weight", {}, "critical"),
            steadygrad.Finding("nonfinite", 30, None, {"loss": float("nan")}, "critical"),
        ]
    )
    store.close()
    return steadygrad.diagnose(tmp_path / name)


def test_gradient_growth_that_overshooting_steps_explain_ranks_below_them(tmp_path):
    # Same step: the overshoot (a step-size property) produces the large next gradient.
    same = _overshoot_and_growth(tmp_path, "same", overshoot_at=5, growth_at=5)
    assert same.causes()[0] == "sharpness_above_limit"
    growth = next(d for d in same.diagnoses if d.cause == "exploding_gradients")
    assert growth.confidence == "low" and "sharpness_above_limit" in growth.why
    # Growth first: it is not explained by a later overshoot, and stays the cause.
    first = _overshoot_and_growth(tmp_path, "first", overshoot_at=12, growth_at=5)
    assert first.causes()[0] == "exploding_gradients"


def test_an_explosion_that_wrecked_the_weights_is_a_break_an_overshoot_explains(tmp_path):
    """A run that blows up in its first steps and then sits at chance (no NaN, no lasting
    climb): the gradient explosion is where it broke, and the overshooting step at that step
    is why."""
    from steadygrad.store import RunStore

    def run(name, ratio):
        store = RunStore(tmp_path / name)
        for step in range(30):
            store.add_scalars(step, {"loss": 2.3, "directional_sharpness_ratio": 0.5})
        store.add_scalars(5, {"loss": 900.0, "directional_sharpness_ratio": ratio})
        explosion = {"grad_norm": 1e4, "next_grad_norm": 1.0, "wrecked_weights": True}
        store.add_findings([steadygrad.Finding("gradient_growth", 5, "w", explosion, "critical")])
        store.close()
        return steadygrad.diagnose(tmp_path / name)

    overshot = run("overshot", 105.0)
    assert overshot.causes()[0] == "sharpness_above_limit"
    assert overshot.top.evidence["broke_at"] == 5
    calm = run("calm", 0.5)  # no overshoot: the explosion is the cause it names
    assert calm.causes()[0] == "exploding_gradients"
