"""Run shapes the first detectors got wrong on scenarios they were not built around (the second
held-out set of bench/scenarios): each has a trigger that must be found and a control that must
not. Streams are made by hand here; where the Monitor itself matters, the runs are real."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import diagnose_stored
from torch import nn

import steadygrad
from steadygrad.core import Record
from steadygrad.core.metrics import ADAPTIVE_UPDATE
from steadygrad.diagnose.detectors import (
    GradientGrowth,
    GradientSpike,
    GradNormSpikeDetector,
    LossDivergence,
    UnstableSteps,
)
from steadygrad.diagnose.detectors.base import PREVIOUS_READING
from steadygrad.diagnose.detectors.trends import SustainedLevel
from steadygrad.diagnose.diagnosis import judge
from steadygrad.diagnose.rules import MECHANISM, Diagnosis


def _stream(detector, rows, meta=None):
    return [
        f
        for step, values in enumerate(rows)
        for f in detector.update(Record(step, values, meta=dict(meta or {})))
    ]


def _losses(values):
    return [{"loss": float(x)} for x in values]


# -- the noise of a loss is how far it strays from one step to the next ---------------------------


def test_a_clean_descent_is_no_noise_and_the_climb_back_to_chance_is_found():
    # Label noise growing from step 60: a loss that fell cleanly from 1.4 to 0.2 climbs back
    # to chance. The MAD of the values (the whole descent) was 0.5 and hid the climb.
    rng = np.random.default_rng(0)
    t = np.arange(240)
    falling = 0.2 + 1.2 * np.exp(-t[:60] / 20)
    climbing = 0.2 + 1.2 * (1 - np.exp(-(t[60:] - 60) / 40))
    losses = np.concatenate([falling, climbing]) + 0.02 * rng.standard_normal(240)
    level = SustainedLevel()
    for x in losses[:60]:
        level.add(float(x))
    values = np.asarray(level.recent)
    assert level.spread() < 0.2 * 1.4826 * np.median(np.abs(values - np.median(values)))
    found = _stream(LossDivergence(), _losses(losses))
    assert found and 60 < found[0].step < 110


# -- one bad batch is not a divergence ------------------------------------------------------------


def test_one_far_out_loss_that_comes_back_is_no_divergence():
    # An unscaled batch: 300x the loss for one step, then an adaptive optimizer's knock that
    # decays back over a dozen steps.
    base = 0.03 + 0.001 * np.sin(np.arange(200))
    losses = base.copy()
    losses[120] = 10.7
    losses[121:135] += 0.6 * 0.75 ** np.arange(14)
    assert _stream(LossDivergence(), _losses(losses)) == []


def test_a_far_out_loss_followed_by_a_higher_one_is_critical_at_the_first():
    losses = [2.3, 2.2, 2.1, 2.0, 1.9] * 6 + [40.0, 4000.0, 4e6, 4e9]
    found = _stream(LossDivergence(), _losses(losses))
    assert [(f.step, f.severity) for f in found][:1] == [(30, "critical")]


def test_a_far_out_loss_followed_by_nan_is_critical_at_the_first():
    losses = [2.3, 2.2, 2.1, 2.0, 1.9] * 6 + [40.0, math.nan]
    found = _stream(LossDivergence(), _losses(losses))
    assert [(f.step, f.severity) for f in found] == [(30, "critical")]


# -- a run the first updates broke -----------------------------------------------------------------


def test_a_loss_that_jumps_10x_at_the_first_update_and_stays_is_critical():
    rng = np.random.default_rng(1)
    losses = [2.34] + list(15 + 4 * rng.standard_normal(59).clip(-1.5, 1.5))
    found = _stream(LossDivergence(), _losses(losses))
    assert found[0].step == 1 and found[0].severity == "critical"
    assert found[0].evidence["broke_at_once"] and found[0].evidence["best_level"] == 2.34


def test_an_early_bump_that_training_gets_over_is_not_a_broken_run():
    # Adam without warm-up: the loss doubles for a few steps, then falls.
    losses = [2.3, 3.5, 4.6, 4.0, 3.1, 2.4, 2.2, 2.0] + list(np.linspace(1.9, 0.5, 50))
    assert _stream(LossDivergence(), _losses(losses)) == []


# -- a gradient norm leaving a plateau is no spike ----------------------------------------------


def test_a_gradient_norm_climbing_over_several_steps_is_no_spike():
    rng = np.random.default_rng(0)
    norms = list(np.exp(0.15 * rng.standard_normal(80)))  # around 1
    norms += [2.3, 1.4, 4.8, 2.9, 6.2, 5.0, 6.6, 7.7, 6.9, 6.9, 11.9, 11.1, 2.8, 5.5, 5.5]
    assert _stream(GradNormSpikeDetector(), [{"grad_norm": g} for g in norms]) == []
    norms[85] = 60.0  # a real spike stands far above the steps just before it too
    found = _stream(GradNormSpikeDetector(), [{"grad_norm": g} for g in norms])
    assert [f.step for f in found] == [85]


# -- an explosion that wrecked the weights ---------------------------------------------------------


def _explosion(weights_after: float, losses_after: list[float]):
    rows = []
    for t in range(60):
        rows.append({"grad_norm": 1.0 + 0.1 * math.sin(t), "param_norm": 940.0, "loss": 2.7})
    rows.append({"grad_norm": 19000.0, "param_norm": weights_after, "loss": 2.69})
    for x in losses_after:
        rows.append({"grad_norm": 1.5, "param_norm": weights_after, "loss": x})
    return _stream(GradientGrowth(), rows)


def test_an_explosion_is_confirmed_when_the_loss_stalls_within_a_few_steps():
    found = _explosion(9678.0, [2.69, 3.7, 3.6, 3.5, 3.5, 3.4, 3.4])
    assert [(f.step, f.severity) for f in found] == [(60, "critical")]
    assert found[0].evidence["wrecked_weights"]


def test_an_explosion_whose_update_left_the_weights_alone_is_not_one():
    # Adam: one giant gradient moves each weight by about the learning rate and poisons the
    # second moment; the weights' norm barely moves.
    assert _explosion(940.1, [2.69, 3.7, 3.6, 3.5, 3.5, 3.4, 3.4]) == []


def test_an_explosion_the_run_shrugs_off_is_not_one():
    assert _explosion(9678.0, [2.6, 2.5, 2.45, 2.4, 2.35, 2.3, 2.25]) == []


# -- an adaptive step's directional ratio -------------------------------------------------------


def test_adaptive_steps_reading_above_the_limit_are_left_to_the_rules():
    rows = [{"loss": 1.0 + 0.01 * t, "directional_sharpness_ratio": 2.5} for t in range(20)]
    assert _stream(UnstableSteps(), rows, meta={ADAPTIVE_UPDATE: True}) == []
    assert _stream(UnstableSteps(), rows) != []


# -- a cause measured on a cadence, found at its first reading after the break -------------------


def _judged(previous: int | None) -> Diagnosis:
    evidence = {"first": {PREVIOUS_READING: previous}} if previous is not None else {}
    d = Diagnosis(
        "loss_of_plasticity", "dead units", "warning", 98, [], evidence, [], "", MECHANISM
    )
    judge(d, broke=97)
    return d


def test_a_cadenced_cause_read_first_after_the_break_may_have_come_first():
    assert _judged(previous=96).confidence == "medium" and _judged(previous=96).score == 40.0
    assert _judged(previous=97).confidence == "low"  # it was read after the break, and healthy
    assert _judged(previous=None).confidence == "low"


# -- real runs ---------------------------------------------------------------------------------


def _fit(tmp_path, name, model, opt, steps=40):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    y = torch.randint(0, 4, (64,), generator=g)
    with steadygrad.watch(model, opt, tmp_path / name, progress=False, update_every=5) as mon:
        for _ in range(steps):
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    return mon


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
    )


def test_a_layer_frozen_by_mistake_while_the_optimizer_holds_it_is_found(tmp_path):
    model = _mlp()
    model[2].requires_grad_(False)  # the optimizer below still holds it
    mon = _fit(tmp_path, "frozen", model, torch.optim.Adam(model.parameters(), lr=1e-2))
    frozen = {f.where for f in mon.findings if f.kind == "update_ratio_out_of_range"}
    assert frozen == {"2.weight"}  # biases are never judged frozen
    report = steadygrad.diagnose(tmp_path / "frozen")
    assert report.top.cause == "update_ratio_out_of_range" and "2.weight" in report.top.where


def test_a_layer_frozen_and_left_out_of_the_optimizer_is_no_finding(tmp_path):
    model = _mlp()
    model[2].requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    mon = _fit(tmp_path, "left_out", model, torch.optim.Adam(trainable, lr=1e-2))
    assert mon.findings == []
    assert not any(
        n.startswith("grad_norm/2.") for n in steadygrad.load(tmp_path / "left_out").names()
    )


@pytest.mark.parametrize("alarm", [True, False])
def test_the_mechanism_signals_look_at_the_step_after_a_finding(tmp_path, alarm):
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=g), torch.randint(0, 4, (64,), generator=g)
    seen = []
    with steadygrad.watch(model, opt, tmp_path / str(alarm), progress=False) as mon:
        for step in range(34):
            loss = nn.functional.cross_entropy(model(x), y)
            # the alarm's batch pulls the weights too (a spike its gradient did not feel would
            # be a batch the update did not feel, and no alarm)
            (loss * 20 if alarm and step == 28 else loss).backward()
            opt.step()
            record = mon.step(loss * 1000 if alarm and step == 28 else loss)
            opt.zero_grad()
            if any(k.startswith("relu_active/") for k in record.values):
                seen.append(step)
    assert any(f.step == 28 for f in mon.findings) is alarm
    # dead units are read every 12 steps (0, 12, 24): after the findings of step 28, told at 29
    # once the next loss said it was one batch and not a new stage of the data, the next 3 too
    assert seen == ([0, 12, 24, 30, 31, 32] if alarm else [0, 12, 24])


# -- rules on stored runs ----------------------------------------------------------------------


def test_a_learning_rate_rising_into_the_break_names_the_step_size_from_where_it_rose(tmp_path):
    rows = [{"loss": 1.0 - 0.004 * t, "lr/0": 0.01 * (1 + t)} for t in range(100)]
    grew = ("gradient_growth", 80, "fc.weight", {}, "warning")
    broke = ("loss_divergence", 90, None, {"ratio": 4.0}, "critical")
    report = diagnose_stored(tmp_path, "ramp", rows, [grew, broke])
    assert report.top.cause == "sharpness_above_limit" and report.top.first_step == 0
    # the same break under a constant learning rate: the growth, not the step size
    flat = [{**r, "lr/0": 0.05} for r in rows]
    report = diagnose_stored(tmp_path, "flat", flat, [grew, broke])
    assert "sharpness_above_limit" not in report.causes()


def test_one_reading_above_one_before_the_break_is_no_overshoot(tmp_path):
    rows = [{"loss": 1.0} for _ in range(100)]
    for t in range(80, 91):
        rows[t]["directional_sharpness_ratio"] = 1.4 if t == 86 else 0.4
    climb = [("loss_divergence", 85, None, {}, "warning")]
    climb.append(("loss_divergence", 90, None, {"ratio": 4.0}, "critical"))
    assert "sharpness_above_limit" not in diagnose_stored(tmp_path, "one", rows, climb).causes()
    for t in range(82, 91):
        rows[t]["directional_sharpness_ratio"] = 1.4
    assert diagnose_stored(tmp_path, "most", rows, climb).top.cause == "sharpness_above_limit"


def test_a_run_broken_by_its_first_updates_names_the_step_size(tmp_path):
    rows = [{"loss": 2.3}] + [{"loss": 15.0} for _ in range(40)]
    broke = ("loss_divergence", 1, None, {"ratio": 6.5, "broke_at_once": True}, "critical")
    dead = ("loss_of_plasticity", 24, "layer2", {"reason": "dead_units"}, "warning")
    report = diagnose_stored(tmp_path, "at_once", rows, [broke, dead])
    assert report.top.cause == "sharpness_above_limit", report.text()
    # gradients exploding before any update: the initialisation, not the step size
    init = ("gradient_growth", 0, "rnn.weight_hh_l0", {"wrecked_weights": True}, "critical")
    report = diagnose_stored(tmp_path, "init", rows, [broke, dead, init])
    assert "sharpness_above_limit" not in report.causes()


def test_a_tensor_spiking_with_a_small_share_of_the_gradient_is_info():
    det = GradientSpike(warmup=2)
    rows = [{"grad_norm": 1.0, "grad_norm/ln.weight": 0.001, "grad_norm/fc.weight": 1.0}] * 5
    rows = rows + [{"grad_norm": 1.0, "grad_norm/ln.weight": 0.08, "grad_norm/fc.weight": 1.0}]
    assert [(f.where, f.severity) for f in _stream(det, rows)] == [("ln.weight", "info")]
    det = GradientSpike(warmup=2)
    rows[-1] = {"grad_norm": 80.0, "grad_norm/ln.weight": 0.001, "grad_norm/fc.weight": 80.0}
    assert [(f.where, f.severity) for f in _stream(det, rows)] == [("fc.weight", "warning")]


def test_an_output_signal_with_no_head_to_guess_stays_off_and_says_so(tmp_path):
    model = nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU(), nn.Flatten())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    signals = [steadygrad.OutputLogitSignal(), steadygrad.SoftmaxCollapseSignal()]
    with steadygrad.watch(model, opt, tmp_path / "conv", signals=signals, progress=False) as mon:
        for _ in range(3):
            loss = model(torch.randn(8, 1, 10)).pow(2).mean()
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    said = steadygrad.load(tmp_path / "conv").config["signals"]
    assert "no nn.Linear" in said["OutputLogitSignal"]
    with pytest.raises(ValueError, match="not found"):
        steadygrad.Monitor(
            model, opt, tmp_path / "named", signals=[steadygrad.OutputLogitSignal(module="head")]
        )


# -- gradients exploding through depth at initialisation ------------------------------------------


def _deep_tanh(std: float | None) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(8, 16)] + [nn.Linear(16, 16) for _ in range(19)]
    if std is not None:  # the bug: weights drawn with normal_(0, std), no fan-in scaling
        for layer in layers:
            nn.init.normal_(layer.weight, 0.0, std)
    return nn.Sequential(*[m for layer in layers for m in (layer, nn.Tanh())], nn.Linear(16, 4))


@pytest.mark.parametrize("std", [1.0, None])
def test_gradients_growing_through_depth_at_initialisation(tmp_path, std):
    model = _deep_tanh(std)
    # the oracle: the first layer's gradient against the last's at initialisation, on the
    # batch the run starts with, measured here directly
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=g), torch.randint(0, 4, (64,), generator=g)
    nn.functional.cross_entropy(model(x), y).backward()
    ratio = (model[0].weight.grad.norm() / model[-1].weight.grad.norm()).item()
    model.zero_grad(set_to_none=True)
    mon = _fit(tmp_path, str(std), model, torch.optim.SGD(model.parameters(), lr=0.01), steps=5)
    found = [f for f in mon.findings if f.evidence.get("through_depth")]
    if std is None:  # the default (fan-in) init: the gradient does not grow back to the input
        assert ratio < 10 and found == []
    else:
        assert ratio > 100
        assert [(f.step, f.where, f.severity) for f in found] == [(0, "0.weight", "warning")]


# -- a gradient too large for float32's norm, under RMSprop ---------------------------------------


def test_rmsprop_adagrad_and_adadelta_are_per_coordinate_not_sgd():
    from steadygrad.core import optimizer_family
    from steadygrad.curvature import stability_limits

    p = nn.Parameter(torch.zeros(1))
    for opt in (torch.optim.RMSprop([p]), torch.optim.Adagrad([p]), torch.optim.Adadelta([p])):
        assert optimizer_family(opt) == "adaptive"
        with pytest.raises(TypeError, match="no stability limit"):
            stability_limits(opt)  # GD's 2/lr does not apply to a per-coordinate step
    assert optimizer_family(torch.optim.RMSprop([p], momentum=0.9)) == "adaptive"


def test_rprop_is_a_sign_update():
    # Rprop steps each weight by its gradient's sign times a step size of its own (set 116's
    # sea-ice net): not an unknown optimizer, and no 2/lr limit applies
    from steadygrad.core import optimizer_family
    from steadygrad.curvature import stability_limits

    rprop = torch.optim.Rprop([nn.Parameter(torch.zeros(1))])
    assert optimizer_family(rprop) == "sign"
    with pytest.raises(TypeError, match="no stability limit"):
        stability_limits(rprop)


@pytest.mark.parametrize("scale", [1e20, 1.0])
def test_an_unnormalised_batch_that_poisons_rmsprop_is_a_spike_not_a_nan(tmp_path, scale):
    # One batch fed unscaled (x1e20): every gradient entry is finite, but the norm overflows
    # float32 and RMSprop's square average becomes inf, so the weights stop moving.
    model = _mlp()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=g), torch.randint(0, 4, (64,), generator=g)
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False, update_every=5) as mon:
        for step in range(70):
            loss = nn.functional.cross_entropy(model(x * (scale if step == 40 else 1.0)), y)
            loss.backward()
            if step == 40:
                entries_finite = all(bool(p.grad.isfinite().all()) for p in model.parameters())
                norm = float(torch.linalg.vector_norm(model[0].weight.grad))
            opt.step()
            mon.step(loss)
            opt.zero_grad()
            if step == 45:
                before = model[0].weight.detach().clone()
    moved = float((model[0].weight.detach() - before).abs().max())  # the layer fed 1e20 inputs
    spikes = [f.step for f in mon.findings if f.kind == "grad_norm_spike"]
    assert not [f for f in mon.findings if f.kind == "nonfinite"]
    if scale == 1.0:
        assert spikes == [] and moved > 0
        return
    assert entries_finite and norm == math.inf and moved == 0.0  # the fault, checked by hand
    assert spikes == [40]
    causes = [d.cause for d in steadygrad.diagnose(tmp_path / "run").diagnoses]
    assert "adam_second_moment_poisoned" in causes
    if "update_ratio_out_of_range" in causes:  # the frozen look is the poisoning's consequence
        assert causes.index("adam_second_moment_poisoned") < causes.index(
            "update_ratio_out_of_range"
        )


# -- causes judged by what followed them (the fifth held-out set) ---------------------------------


def test_a_rate_raised_on_a_resume_explains_the_climb_after_it(tmp_path):
    # 1e-2 for 200 steps, then 0.3: the loss jumps to chance (a warning-level climb), and the
    # attention logits the giant steps blew up are found after it.
    rows = [{"loss": 3.0, "lr/0": 0.01 if t < 200 else 0.3} for t in range(240)]
    climb = ("loss_divergence", 206, None, {"ratio": 1.6}, "warning")
    attn = ("attention_logit_growth", 207, "enc.attn", {}, "warning")
    report = diagnose_stored(tmp_path, "raised", rows, [climb, attn])
    assert report.top.cause == "sharpness_above_limit" and report.top.first_step == 199
    flat = [{**r, "lr/0": 0.01} for r in rows]  # the same climb at a constant rate
    report = diagnose_stored(tmp_path, "flat", flat, [climb, attn])
    assert report.top.cause == "attention_logit_growth"
    assert "sharpness_above_limit" not in report.causes()


@pytest.mark.parametrize("progress", [True, False])
def test_dead_units_the_loss_kept_improving_past_do_not_explain_a_climb(tmp_path, progress):
    rows = [{"loss": 3.0} for _ in range(220)]
    dead = ("loss_of_plasticity", 24 if progress else 150, "fc1", {"dead_units": 0.6}, "warning")
    best = 142  # the best level the loss reached, after the dead units were seen (or not)
    climb = ("loss_divergence", 209, None, {"ratio": 3.0, "best_level_step": best}, "critical")
    logits = ("output_logit_divergence", 183, "lm_head", {}, "warning")
    report = diagnose_stored(tmp_path, str(progress), rows, [dead, climb, logits])
    assert report.top.cause == ("output_logit_divergence" if progress else "loss_of_plasticity")
    plasticity = next(d for d in report.diagnoses if d.cause == "loss_of_plasticity")
    assert (plasticity.confidence == "low") is progress


def test_a_spike_poisons_the_second_moment_once_its_momentum_has_passed(tmp_path):
    # Adam at a constant rate: the update ratio measured every 10 steps. After the spike at 80
    # the first moment still carries it (large updates to step ~100), then v damps them 10x,
    # and the loss, falling until the spike, stalls.
    rows = [{"loss": 2.0 - 0.005 * min(t, 80)} for t in range(200)]
    for t in range(0, 200, 10):
        ratio = 0.01 if t < 80 else 0.03 if t <= 100 else 0.001
        rows[t]["update_ratio/fc.weight"] = ratio
        rows[t]["update_ratio/head.weight"] = 2 * ratio
    spike = ("grad_norm_spike", 80, None, {"ratio": 300.0}, "warning")
    small = ("gradient_spike", 80, "ln.weight", {"spike_factor": 500.0}, "info")

    def report(name, optimizer, findings):
        from steadygrad.store import load

        diagnose_stored(tmp_path, name, rows, findings)
        run = load(tmp_path / name)
        run.config["optimizer_family"] = optimizer  # as the Monitor records it
        return steadygrad.diagnose(run)

    assert report("adam", "adam", [spike]).top.cause == "adam_second_moment_poisoned"
    assert report("rmsprop", "adaptive", [spike]).top.cause == "adam_second_moment_poisoned"
    assert "adam_second_moment_poisoned" not in report("sgd", "sgd", [spike]).causes()
    # a spike on a tensor carrying a small share of the gradient (info) poisons nothing
    assert "adam_second_moment_poisoned" not in report("info", "adam", [small]).causes()


@pytest.mark.parametrize("aftermath", [0.1, 40.0])
def test_one_batch_that_knocks_a_fit_off_is_an_outlier_even_if_the_loss_stays_up(
    tmp_path, aftermath
):
    # A SIREN fitted to 2e-4 meets one batch with corrupt targets (loss 170); Adam's kick
    # leaves it at ~0.1, far below the spike, and the run goes on. Staying near the spike's
    # level (40) is a run that blew up, not one bad batch.
    rows = [{"loss": 2e-4} for _ in range(180)] + [{"loss": 170.0}]
    rows += [{"loss": aftermath * (1 + 0.1 * np.sin(t))} for t in range(60)]
    spike = ("loss_spike", 180, None, {"loss": 170.0, "baseline": 2e-4, "ratio": 8.5e5}, "warning")
    causes = diagnose_stored(tmp_path, str(aftermath), rows, [spike]).causes()
    assert ("data_outlier" in causes) is (aftermath < 1)


# -- explosions: where the weights grew, and whether they grew everywhere (eighth set) ----------


def _weights(tmp_path, name, growth, findings, steps=120):
    # per-tensor weight norms, each growing geometrically by its own factor over the run
    rows = []
    for t in range(steps):
        row = {"loss": 1.0 if t < 100 else 1.0 + 0.2 * (t - 100)}
        for tensor, factor in growth.items():
            row[f"param_norm/{tensor}"] = factor ** (t / (steps - 1))
        rows.append(row)
    return diagnose_stored(tmp_path, name, rows, findings)


def test_an_explosion_is_placed_at_the_weights_that_grew_and_demoted_if_all_grew(tmp_path):
    grew = ("gradient_growth", 110, "stem.weight", {"started_at_step": 20}, "critical")
    climb = ("loss_divergence", 105, None, {"ratio": 3.0, "best_level_step": 99}, "critical")
    grew = [grew, climb]
    one = {"stem.weight": 1.2, "trans1.weight": 20.0, "head.weight": 1.5, "trans1.bias": 90.0}
    report = _weights(tmp_path, "one", one, grew)
    explosion = next(d for d in report.diagnoses if d.cause == "exploding_gradients")
    assert explosion.where[0] == "trans1" and "stem.weight" in explosion.where  # bias ignored
    assert report.top.cause == "exploding_gradients"
    # every weight grew 4x (a weight decay of the wrong sign): the growth follows the weights
    everywhere = {"stem.weight": 4.0, "trans1.weight": 4.2, "head.weight": 3.9}
    report = _weights(tmp_path, "all", everywhere, grew)
    explosion = next(d for d in report.diagnoses if d.cause == "exploding_gradients")
    assert explosion.confidence == "low" and "everywhere" in explosion.why
    assert report.top.cause == "loss_divergence"


@pytest.mark.parametrize("began, confirmed", [(20, 104), (105, 106), (20, 180)])
def test_growth_confirmed_just_after_the_break_that_began_before_it_may_have_come_first(
    tmp_path, began, confirmed
):
    rows = [{"loss": 1.0 if t < 100 else 3.0} for t in range(200)]
    climb = ("loss_divergence", 100, None, {"ratio": 3.0, "best_level_step": 60}, "critical")
    grew = ("gradient_growth", confirmed, "w", {"started_at_step": began}, "critical")
    report = diagnose_stored(tmp_path, f"{began}-{confirmed}", rows, [climb, grew])
    credited = began < 100 and confirmed <= 110  # began before, and confirmed soon after
    assert (report.top.cause == "exploding_gradients") is credited


def test_dead_units_before_a_nan_that_the_loss_improved_past_do_not_explain_it(tmp_path):
    rows = [{"loss": 2.0 * math.exp(-t / 40)} for t in range(170)] + [{"loss": math.nan}]
    dead = ("loss_of_plasticity", 24, "body.2", {"dead_units": 0.52}, "warning")
    nan = ("nonfinite", 170, "features", {}, "critical")
    report = diagnose_stored(tmp_path, "nan", rows, [dead, nan])
    assert report.top.cause == "nonfinite"
    plasticity = next(d for d in report.diagnoses if d.cause == "loss_of_plasticity")
    assert plasticity.confidence == "low" and "non-finite value" in plasticity.why


# -- the ninth held-out set ---------------------------------------------------------------------


@pytest.mark.parametrize("dead_at", [396, 150, 275])
def test_dead_units_first_seen_long_into_a_climb_are_its_consequence(tmp_path, dead_at):
    # 396: 127 steps into the climb (data drift, then units die); 150: before it; 275: just
    # after it began (units dying as a penalty bites make the loss climb)
    rows = [{"loss": 2.2 if t < 200 else 2.2 + 0.01 * (t - 200)} for t in range(400)]
    climb = ("loss_divergence", 269, None, {"ratio": 1.56, "best_level_step": 178}, "warning")
    dead = ("loss_of_plasticity", dead_at, "mlp.fc", {"previous_reading": dead_at - 12}, "warning")
    report = diagnose_stored(tmp_path, str(dead_at), rows, [climb, dead])
    assert report.top.cause == ("loss_divergence" if dead_at >= 319 else "loss_of_plasticity")


def test_a_rate_raised_60_steps_before_the_climb_explains_it_and_the_large_updates(tmp_path):
    # SGD resumed at 6x the rate at step 150: one tensor's updates outgrow its weights from
    # 190, and the loss climbs from 210
    rows = [{"loss": 0.5, "lr/0": 0.1 if t < 150 else 0.6} for t in range(300)]
    large = ("update_ratio_out_of_range", 190, "log_width", {"direction": "too_large"}, "warning")
    climb = ("loss_divergence", 210, None, {"ratio": 2.2}, "warning")
    report = diagnose_stored(tmp_path, "resume", rows, [large, climb])
    assert report.top.cause == "sharpness_above_limit" and report.top.first_step == 149
    ratio = next(d for d in report.diagnoses if d.cause == "update_ratio_out_of_range")
    assert ratio.confidence == "low"
    flat = [{**r, "lr/0": 0.1} for r in rows]  # the same run at a constant rate
    assert (
        diagnose_stored(tmp_path, "flat", flat, [large, climb]).top.cause
        == "update_ratio_out_of_range"
    )


# -- the fifth session: recurrences, NaNs no gradient reached, dead code --------------------------


def _recurrent_run(tmp_path, name, rnn_grows: bool, recurrent: list[str]):
    from steadygrad.core import Finding
    from steadygrad.store import RunStore

    store = RunStore(tmp_path / name, config={"recurrent_modules": recurrent})
    for t in range(120):
        burst = 1000.0 if t == 100 else 1.0
        store.add_scalars(
            t,
            {
                "loss": 2.0 if t <= 100 else 4.0,
                "grad_norm/embed.weight": burst * 20.0,  # the largest: every time step adds
                "grad_norm/rnn.weight_hh_l0": burst * 0.1 if rnn_grows else 0.1,
                "grad_norm/head.weight": 0.5,
            },
        )
    wrecked = {"grad_norm": 2e4, "ratio": 1e3, "wrecked_weights": True}
    store.add_findings([Finding("gradient_growth", 100, "embed.weight", wrecked, "critical")])
    store.close()
    report = steadygrad.diagnose(tmp_path / name)
    return next(d for d in report.diagnoses if d.cause == "exploding_gradients")


def test_an_explosion_through_a_recurrence_is_placed_at_it_not_at_the_embedding_before_it(
    tmp_path,
):
    # The embedding before an RNN gets the largest gradient (every time step adds to it) while
    # the explosion goes through the recurrence, whose own gradient grew 1000x.
    explosion = _recurrent_run(tmp_path, "rnn", rnn_grows=True, recurrent=["rnn"])
    assert explosion.where[0] == "rnn" and "embed.weight" in explosion.where
    assert explosion.evidence["through_time"] == {"module": "rnn", "factor": 1000.0}
    # controls: the recurrence's gradient did not grow; or the model has no recurrence
    flat = _recurrent_run(tmp_path, "flat", rnn_grows=False, recurrent=["rnn"])
    assert flat.where[0] == "embed.weight"
    plain = _recurrent_run(tmp_path, "plain", rnn_grows=True, recurrent=[])
    assert plain.where[0] == "embed.weight"


def test_the_monitor_lists_the_recurrent_modules_in_the_run_config(tmp_path):
    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.rnn = nn.GRU(4, 8, batch_first=True)
            self.cell = nn.LSTMCell(8, 8)
            self.head = nn.Linear(8, 3)

    model = Tagger()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with steadygrad.watch(model, opt, tmp_path / "tagger", progress=False):
        pass
    assert steadygrad.load(tmp_path / "tagger").config["recurrent_modules"] == ["rnn", "cell"]


class _Pointer(nn.Module):
    """Scores positions and masks the padded ones with -inf: a row with nothing left is NaN in
    the log-softmax, and masked_fill passes no gradient to it."""

    def __init__(self):
        super().__init__()
        self.score = nn.Linear(4, 1)
        self.pointer = _Masked()

    def forward(self, x):
        return self.pointer(self.score(x).squeeze(-1), x[..., 0] != 0)


class _Masked(nn.Module):
    def forward(self, scores, mask):
        return torch.log_softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)


@pytest.mark.parametrize("empty_at", [13, None])
def test_a_nan_loss_no_gradient_reached_is_traced_to_its_module_by_a_replay(tmp_path, empty_at):
    torch.manual_seed(0)
    model = _Pointer()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    with steadygrad.watch(model, opt, tmp_path / "p", progress=False) as mon:
        for step in range(20):  # step 13 is off the activation cadence (every 25, from 0)
            x = torch.randn(8, 6, 4, generator=g)
            x[:, :2, 0] = 0.0  # two padded positions in every row
            if step == empty_at:
                x[3, :, 0] = 0.0  # a row whose items were all filtered out upstream
            target = x[..., 1].argmax(-1).clamp(min=2)
            loss = nn.functional.nll_loss(model(x), target)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
            if step == empty_at:
                assert not math.isfinite(loss.item())
                assert all(p.grad is None or p.isfinite().all() for p in model.parameters())
    nan = [f for f in mon.findings if f.kind == "nonfinite"]
    if empty_at is None:
        assert nan == []
        return
    assert [(f.step, f.where) for f in nan] == [(13, "pointer")]
    origin = nan[0].evidence["forward_origin"]
    assert origin["replayed"] and origin["weights"] == "after a finite update"


class _Branchy(nn.Module):
    """A trunk and a side branch; ``side`` says what becomes of the branch's output."""

    def __init__(self, side: str):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.LayerNorm(32))
        self.branch = nn.Linear(32, 32)
        self.head = nn.Linear(32, 4)
        self.side = side
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        h = self.trunk(x)
        b = self.branch(h)  # computed every step
        if self.side == "detached":
            h = h + b.detach()  # used, but no gradient reaches it: a frozen layer
        if self.side == "zero_input":  # a weight whose input is always zero (TabNet's first
            h = h + self.branch(torch.zeros_like(h))  # attentive step): its gradient is 0
        return self.head(self.drop(h))  # "unused": b goes nowhere (dead code)


@pytest.mark.parametrize("side", ["unused", "zero_input", "detached"])
def test_a_weight_whose_value_changes_nothing_is_dead_code_not_a_frozen_layer(tmp_path, side):
    model = _Branchy(side)
    mon = _fit(tmp_path, side, model, torch.optim.Adam(model.parameters(), lr=1e-2))
    branch = {(f.where, f.severity, f.evidence["direction"]) for f in mon.findings}
    dead = {"unused": ["branch.weight", "branch.bias"], "zero_input": ["branch.weight"]}
    if side == "detached":
        assert branch == {("branch.weight", "warning", "frozen")}
    else:
        assert branch == {(name, "info", "unused") for name in dead[side]}
    report = steadygrad.diagnose(tmp_path / side)
    assert (report.top.severity == "warning") == (side == "detached")


# -- the eleventh held-out set: what a run trained through, units idle from the start -------------


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_a_gradient_100x_the_weights_at_init_is_an_explosion_only_if_the_run_is_hurt(
    tmp_path, optimizer
):
    # Inputs 1000x too large at initialisation: the first gradient dwarfs the weights. SGD's
    # first step scales with it and wrecks the fit; Adam's does not, and the run trains on.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    g = torch.Generator().manual_seed(0)
    x = 1000.0 * torch.randn(64, 8, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    opt = (
        torch.optim.Adam(model.parameters(), lr=1e-2)
        if optimizer == "adam"
        else torch.optim.SGD(model.parameters(), lr=0.1)
    )
    losses = []
    with steadygrad.watch(model, opt, tmp_path / optimizer, progress=False) as mon:
        for _ in range(30):
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            losses.append(loss.item())
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    growth = [(f.step, f.severity) for f in mon.findings if f.kind == "gradient_growth"]
    if optimizer == "adam":
        assert min(losses[-5:]) < 0.01 * losses[0]  # the oracle: it trained through it
        assert growth == []
    else:  # the oracle: the first steps hurt (the wrecked weights hide the ratio at step 0)
        assert min(losses[1:6]) > 100 * losses[0]
        assert growth[0][1] == "critical" and growth[0][0] <= 5


def test_units_idle_from_the_first_reading_are_no_lost_plasticity():
    from steadygrad.diagnose.detectors import PlasticityLoss

    def found(shares, zeroed=0.0):
        rows = [
            {"loss": 1.0 - 0.01 * t, "dead_units/fc": s, "zeroed_units/fc": zeroed}
            for t, s in enumerate(shares)
        ]
        return [f.step for f in _stream(PlasticityLoss(), rows)]

    assert found([0.56] * 20) == []  # half idle from the start (non-negative, pooled inputs)
    assert found([0.56] * 5 + [0.8] * 15) == [6]  # half of those alive then died
    assert found([0.0] * 5 + [0.6] * 15) == [6]  # most died
    assert found([1.0] * 20) == [1]  # all dead from the start
    assert found([0.5] * 20, zeroed=0.5) == [1]  # half fed exactly 0: a gain zeroed by mistake


@pytest.mark.parametrize("zero_gamma", [True, False])
def test_units_fed_exactly_zero_are_measured_as_zeroed(tmp_path, zero_gamma):
    # a BatchNorm whose gain was zero-initialised on half its channels (meant for the last
    # norm of a residual branch): those channels give exactly 0 to the ReLU, and stay dead
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4)
    )
    if zero_gamma:
        with torch.no_grad():
            model[1].weight[:4] = 0.0
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
    with steadygrad.watch(model, opt, tmp_path / "bn", progress=False) as mon:
        for _ in range(30):
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    steps, zeroed = steadygrad.load(tmp_path / "bn").series("zeroed_units/1")
    assert list(zeroed) == [0.5 if zero_gamma else 0.0] * len(steps)  # the oracle: 4 of 8
    dead = [f.where for f in mon.findings if f.kind == "loss_of_plasticity"]
    assert dead == (["1"] if zero_gamma else [])


def _frozen_then(tmp_path, name, later):
    rows = [{"loss": 2.0 - 0.01 * min(t, 150)} for t in range(300)]
    frozen = ("update_ratio_out_of_range", 20, "pos.weight", {"direction": "frozen"}, "warning")
    return diagnose_stored(tmp_path, name, rows, [frozen, *later])


def test_a_frozen_tensor_the_loss_improved_past_ranks_below_what_stopped_it(tmp_path):
    # A frozen positional table from step 20 (the loss kept improving until 150), then
    # attention logits growing from 150 stalled it: the run never broke.
    poisoned = ("attention_logit_growth", 150, "h.0.attn", {"attn_logit_max": 60.0}, "warning")
    report = _frozen_then(tmp_path, "poisoned", [poisoned])
    assert report.top.cause == "attention_logit_growth"
    frozen = next(d for d in report.diagnoses if d.cause == "update_ratio_out_of_range")
    assert frozen.confidence == "low" and "kept improving until step 15" in frozen.why
    # controls: frozen alone is still the answer; updates too large are not demoted
    assert _frozen_then(tmp_path, "alone", []).top.cause == "update_ratio_out_of_range"
    large = ("update_ratio_out_of_range", 10, "fc.weight", {"direction": "too_large"}, "warning")
    report = _frozen_then(tmp_path, "large", [poisoned, large])
    assert report.top.cause == "update_ratio_out_of_range"


def _knocked(tmp_path, name, before, after, broke):
    # a calm run (loss 0.9) meets one batch at step 130; ``before``: the loss at step 129;
    # ``after``: the losses that follow; ``broke``: a critical divergence found at step 132
    rows = [{"loss": 0.9} for _ in range(129)] + [{"loss": before}, {"loss": 521.0}]
    rows += [{"loss": x} for x in after]
    spike = ("loss_spike", 130, None, {"loss": 521.0, "baseline": 0.93, "ratio": 560.0}, "warning")
    findings = [spike]
    if broke:
        findings.append(("loss_divergence", 132, None, {"ratio": 70.0}, "critical"))
    return diagnose_stored(tmp_path, name, rows, findings)


def test_one_batch_whose_knock_broke_the_run_is_an_outlier_if_it_was_the_peak(tmp_path):
    # A point cloud in millimetres: 560x the loss at once out of a calm run; SGD's momentum
    # carries the knock for a few steps (the run breaks) and the fit is left at chance.
    knock = [11.0, 57.0, 105.0, 2.1, 1.1] + [1.15] * 60
    report = _knocked(tmp_path, "knock", 0.92, knock, broke=True)
    assert report.top.cause == "data_outlier" and report.top.first_step == 130
    # controls: what followed came within 4x of the spike (growth, not a knock); the loss was
    # already climbing into the spike (a swing of an unstable run)
    growing = [11.0, 57.0, 300.0, 2.1, 1.1] + [1.15] * 60
    assert "data_outlier" not in _knocked(tmp_path, "growing", 0.92, growing, True).causes()
    back = [0.95] * 65
    assert _knocked(tmp_path, "calm", 0.92, back, broke=False).top.cause == "data_outlier"
    assert "data_outlier" not in _knocked(tmp_path, "swing", 100.0, back, broke=False).causes()


def test_weights_that_grew_from_nothing_are_no_amplifier(tmp_path):
    # A GIN's learnt epsilon starts at 0: its "growth" dwarfs the weight that really grew
    grew = ("gradient_growth", 110, "convs.0.eps", {"started_at_step": 20}, "critical")
    climb = ("loss_divergence", 105, None, {"ratio": 3.0, "best_level_step": 99}, "critical")
    norms = {"convs.0.eps": 1e4, "convs.1.mlp.0.weight": 30.0, "head.weight": 1.3}
    rows = []
    for t in range(120):
        row = {"loss": 1.0 if t < 100 else 1.0 + 0.2 * (t - 100)}
        row["param_norm/convs.0.eps"] = 1e-5 * norms["convs.0.eps"] ** (t / 119)
        row["param_norm/convs.1.mlp.0.weight"] = 3.0 * 30.0 ** (t / 119)
        row["param_norm/head.weight"] = 2.0 * 1.3 ** (t / 119)
        row["param_norm/convs.0.mlp.0.weight"] = 2.5
        rows.append(row)
    report = diagnose_stored(tmp_path, "gin", rows, [grew, climb])
    explosion = next(d for d in report.diagnoses if d.cause == "exploding_gradients")
    assert explosion.where[0] == "convs.1.mlp.0"


@pytest.mark.parametrize("everywhere", [True, False])
def test_output_logits_that_grew_with_every_weight_are_their_consequence(tmp_path, everywhere):
    # A weight decay of the wrong sign grows every tensor 12x; the head's logits follow
    growth = {"blocks.0.weight": 12.0, "blocks.1.weight": 11.0, "head.weight": 13.0}
    if not everywhere:  # a z-loss of the wrong sign: the head alone grows
        growth = {"blocks.0.weight": 1.1, "blocks.1.weight": 1.2, "head.weight": 13.0}
    logits = ("output_logit_divergence", 105, "head", {"drift": 12.0}, "warning")
    climb = ("loss_divergence", 108, None, {"ratio": 2.0, "best_level_step": 99}, "warning")
    report = _weights(tmp_path, str(everywhere), growth, [logits, climb])
    assert report.top.cause == ("loss_divergence" if everywhere else "output_logit_divergence")


@pytest.mark.parametrize("at", [0, 10])
def test_the_first_gradient_is_no_explosion_of_the_steps_after_it(at):
    # A ViT from its config: the first gradient is 1600x the next (the class token starts at
    # 0), Adam's first step moves the tiny weights by a tenth, and the loss does not improve
    # for a while. Nothing came before the first gradient: it is the test at initialisation's.
    rows = [{"grad_norm": 3.3, "param_norm": 15.0, "loss": 2.3} for _ in range(at)]
    first = {"grad_norm": 5442.0, "param_norm": 17.0, "loss": 2.29}  # after its update
    rows.append({**first, "update_ratio/blocks.0.weight": 0.13})
    rows += [{"grad_norm": 3.3, "param_norm": 17.0, "loss": 3.0} for t in range(12)]
    found = [(f.step, f.severity) for f in _stream(GradientGrowth(init_ratio=1e6), rows)]
    assert found == ([] if at == 0 else [(10, "critical")])
    # SGD's first step on a gradient 10^4 times too large: the weights grew 150-fold
    rows[at]["update_ratio/blocks.0.weight"] = 150.0
    found = [(f.step, f.severity) for f in _stream(GradientGrowth(init_ratio=1e6), rows)]
    assert found == [(at, "critical")]


# -- the twelfth held-out set -------------------------------------------------------------------


def test_harmless_spikes_before_the_one_that_mattered_do_not_date_it(tmp_path):
    # info: a spike on a tensor with a tiny share of the gradient; the real one comes later
    rows = [{"loss": 0.3} for _ in range(200)]
    small = ("gradient_spike", 107, "ln.weight", {"spike_factor": 75.0}, "info")
    big = ("gradient_spike", 120, "embed.weight", {"spike_factor": 1.6e5}, "critical")
    report = diagnose_stored(tmp_path, "spikes", rows, [small, big])
    spike = next(d for d in report.diagnoses if d.cause == "gradient_spike")
    assert spike.first_step == 120 and spike.where[0] == "embed.weight"
    only_small = diagnose_stored(tmp_path, "small", rows, [small])
    assert only_small.diagnoses[0].first_step == 107 and only_small.top.severity == "info"


@pytest.mark.parametrize("tensors", [1, 2])
def test_a_model_with_one_or_two_weights_that_all_grew_grew_everywhere(tmp_path, tensors):
    # an echo-state net trains its readout alone: a weight decay of the wrong sign grows it
    growth = {"readout.weight": 8.0} if tensors == 1 else {"a.weight": 8.0, "b.weight": 1.1}
    grew = ("gradient_growth", 110, "readout.weight", {"started_at_step": 20}, "critical")
    climb = ("loss_divergence", 105, None, {"ratio": 3.0, "best_level_step": 99}, "critical")
    report = _weights(tmp_path, str(tensors), growth, [grew, climb])
    explosion = next(d for d in report.diagnoses if d.cause == "exploding_gradients")
    # two tensors of which one grew: that one is the amplifier, not growth everywhere
    assert ("everywhere" in explosion.why) is (tensors == 1)


def test_the_rank_of_non_finite_features_never_raises_into_the_forward(tmp_path):
    # a GAN whose losses blew up: the opt-in plasticity signal's forward hook met NaN features
    # (SVD cannot converge on them) inside the user's own forward
    from steadygrad.monitor.plasticity import PlasticitySignal

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    signal = PlasticitySignal(every=1)
    with steadygrad.watch(model, opt, tmp_path / "nan", progress=False, signals=[signal]) as mon:
        for step in range(4):
            x = torch.randn(8, 4)
            if step == 2:
                x[0, 0] = float("nan")
            loss = model(x).pow(2).mean()  # the hook runs here
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    ranks = steadygrad.load(tmp_path / "nan").series("effective_rank/1")[1]
    assert math.isnan(ranks[2]) and np.isfinite(ranks[:2]).all()


class _Clip(nn.Module):
    """Two towers and a learnt logit scale (CLIP): the logits of in-batch InfoNCE come from no
    module, only from ``logit_scale.exp() * a @ b.T``."""

    def __init__(self, scaled: bool):
        super().__init__()
        self.image, self.text = nn.Linear(8, 16), nn.Linear(8, 16)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.scaled = scaled

    def forward(self, x):
        a = nn.functional.normalize(self.image(x), dim=-1)
        b = nn.functional.normalize(self.text(x + 0.1), dim=-1)
        return (self.logit_scale.exp() if self.scaled else 10.0) * a @ b.T


@pytest.mark.parametrize("scaled", [True, False])
def test_logits_scaled_by_a_bare_parameter_are_placed_at_it(tmp_path, scaled):
    # the scale grows every step (a clamp forgotten): the logits' log-partition drifts up
    torch.manual_seed(0)
    model = _Clip(scaled)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 8), torch.arange(16)
    with steadygrad.watch(model, opt, tmp_path / str(scaled), progress=False) as mon:
        for _ in range(120):
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
            with torch.no_grad():
                model.logit_scale += 0.05
    logits = [f.where for f in mon.findings if f.kind == "output_logit_divergence"]
    if scaled:  # the oracle: the scale itself reached exp(2.3 + 6) ~ 4000
        assert model.logit_scale.exp().item() > 1000 and logits[0] == "logit_scale"
    else:  # a constant scale: nothing drifts, and no parameter is named for it
        assert logits == []
