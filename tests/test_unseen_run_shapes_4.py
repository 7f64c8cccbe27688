"""Run shapes the eighth wave's held-out sets showed, each a trigger and a control: weights
that one bug multiplies step after step (a decay with its sign flipped), growing geometrically
long before the run breaks; logits inflated at initialisation that shrink towards log(classes);
a first record that overflowed; a learning rate raised at a stroke just before a jolt; a spike
judged by the tensors it hit; and a freed output's address reused by the logits."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import diagnose_stored
from torch import nn

import steadygrad


def _regression_run(run_dir, fault: str) -> steadygrad.DiagnosisReport:
    """A ReLU MLP fitting a smooth target under RMSprop. ``runaway``: from step 40 the middle
    layer's weights are multiplied by 1.015 after each update (``p.mul_(1 + lr * wd)`` written
    for ``1 - lr * wd``); ``everywhere``: every weight is; ``lr``: the learning rate is raised
    50x at step 150."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1)
    )
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(512, 8, generator=gen)
    y = torch.sin(2 * x[:, :1]) + 0.3 * x[:, 1:2] ** 2
    grown = {"runaway": list(model[2].parameters()), "everywhere": list(model.parameters())}
    with steadygrad.Monitor(model, opt, run_dir) as mon:
        for step in range(400):
            rows = torch.randint(0, 512, (64,), generator=gen)
            loss = nn.functional.mse_loss(model(x[rows]), y[rows])
            loss.backward()
            opt.step()
            if step >= 40:
                with torch.no_grad():
                    for p in grown.get(fault, []):
                        p.mul_(1.015)
            if fault == "lr" and step == 150:
                opt.param_groups[0]["lr"] = 0.05
            mon.step(loss)
            opt.zero_grad()
    return steadygrad.diagnose(run_dir)


@pytest.mark.parametrize("fault", ["runaway", "everywhere", "lr"])
def test_weights_multiplied_step_after_step_are_where_the_gradients_explode(tmp_path, fault):
    report = _regression_run(tmp_path / fault, fault)
    top = report.top
    exploding = [d for d in report.diagnoses if d.cause == "exploding_gradients"]
    if fault == "runaway":
        # the middle layer's weights grew 1.015x a step from step 40 while the loss went on
        # as before; the run broke some 200 steps later on the steps they made too large
        assert top.cause == "exploding_gradients" and top.where[0] == "2"
        runaway = top.evidence["runaway_weights"]
        assert runaway["parameter"] == "2.weight"
        assert 20 <= runaway["began"] <= 60
        # over the 80 steps before the trouble: 1.015 per step, less what RMSprop took back
        assert 1.5 < runaway["factor"] < 1.015**80
    elif fault == "everywhere":
        # every weight multiplied: no one layer to blame, the gradients grew with all of them
        assert top.cause != "exploding_gradients"
        assert all("runaway_weights" not in d.evidence for d in exploding)
    else:
        # a step size raised past the curvature's limit: the weights did not run away before
        assert top.cause == "sharpness_above_limit"
        assert all("runaway_weights" not in d.evidence for d in exploding)


@pytest.mark.parametrize("shape", ["runaway", "still_learning", "lr_rising"])
def test_geometric_weight_growth_counts_only_without_progress_or_a_rising_step(tmp_path, shape):
    # a layer's norm grows 1.2% a step from step 60; gradients are found growing at 190, after
    # the loss began climbing at 180. Controls: the loss set its best level at 175 (it was
    # still learning: weights grow geometrically out of a small start in deep nets, Saxe et
    # al. 2014), or the learning rate rose 2x over the span (the weights grew with the step)
    def row(t):
        values = {
            "loss": 1.0 - 0.004 * min(t, 100) if t < 180 else 0.6 * 1.02 ** (t - 180),
            "param_norm/body.weight": 3.0 * math.exp(0.012 * max(t - 60, 0)),
            "param_norm/head.weight": 2.0,
            "lr/0": 1e-3 * (1 + max(t - 100, 0) / 80 if shape == "lr_rising" else 1),
        }
        if shape == "still_learning":
            values["loss"] = 1.0 - 0.002 * min(t, 175) if t < 180 else 0.65 * 1.02 ** (t - 180)
        return values

    rows = [row(t) for t in range(240)]
    climb = ("loss_divergence", 180, None, {"ratio": 2.0}, "critical")
    growth = ("gradient_growth", 190, "head.weight", {"growth": 12.0}, "warning")
    report = diagnose_stored(tmp_path, shape, rows, [climb, growth])
    exploding = next(d for d in report.diagnoses if d.cause == "exploding_gradients")
    if shape == "runaway":
        assert exploding.where[0] == "body"
        assert exploding.evidence["runaway_weights"]["began"] == 60
        assert exploding.first_step == 60 and report.top is exploding
    else:
        assert "runaway_weights" not in exploding.evidence
        assert exploding.first_step == 190


@pytest.mark.parametrize("classes", [None, 400])
def test_logits_inflated_at_initialisation_fall_towards_log_classes_unwarned(classes):
    # a T5-style head without its output scaling starts with log Z = 17.7 over 400 classes; as
    # the loss falls the logits shrink and log Z settles near log(400) = 6: towards the level
    # of a softmax with every logit at 0, not away from it. Control: a fall from log(400) to
    # 6 below zero, the divergence Wortsman et al. 2023 describe, warns either way
    from steadygrad.core import Record
    from steadygrad.diagnose.detectors import OutputLogitDivergence

    def findings(lses, losses):
        det = OutputLogitDivergence()
        meta = {"output_classes": classes} if classes else {}
        return [
            f
            for t, (lse, loss) in enumerate(zip(lses, losses, strict=True))
            for f in det.update(Record(25 * t, {"logit_lse_mean": lse, "loss": loss}, meta=meta))
        ]

    shrinking = [17.7, 6.92, 6.4, 6.05, 6.0, 6.05, 6.0, 6.0, 6.09, 6.17]
    losses = [17.4, 5.6, 4.9, 4.5, 4.2, 4.1, 4.0, 3.9, 3.9, 3.8]
    assert bool(findings(shrinking, losses)) == (classes is None)  # unknown classes: as before
    diverging = [6.0, 5.0, 3.5, 1.5, -1.0, -4.0, -6.5, -9.0, -12.0, -15.0]
    assert findings(diverging, losses)


@pytest.mark.parametrize("family", ["adam", "sgd"])
def test_the_optimizer_family_is_read_from_a_first_record_that_overflowed(family):
    # mixed precision with a GradScaler started high: the first steps overflow and are skipped,
    # and the first record (the one that carries the optimizer's family) is non-finite. The
    # first gradient applied is 150x the next, its update as large as the weights: under Adam
    # that is the first step's size whatever the gradient, under SGD the gradient made it
    from steadygrad.core import Record
    from steadygrad.core.metrics import OPTIMIZER_FAMILY
    from steadygrad.diagnose.detectors import GradientGrowth

    detector, found = GradientGrowth(), []
    for step in range(14):
        grad = math.inf if step < 2 else 300.0 if step == 2 else 2.0
        values = {
            "grad_norm": grad,
            "grad_norm/w": grad,
            "param_norm": 1.0,
            "param_norm/w": 1.0,
            "update_ratio/w": 2.0 if step == 2 else 0.01,
            "loss": 2.3,
        }
        meta = {OPTIMIZER_FAMILY: family} if step == 0 else {}
        if step < 2:
            meta["nonfinite"] = True
        found += detector.update(Record(step, values, meta=meta))
    assert [(f.step, f.severity) for f in found] == ([(2, "critical")] if family == "sgd" else [])


def test_layers_frozen_at_attach_are_read_from_a_first_record_that_overflowed():
    from steadygrad.core import Record
    from steadygrad.core.metrics import FROZEN_AT_ATTACH
    from steadygrad.diagnose.detectors import UpdateRatioOutOfRange

    detector, found = UpdateRatioOutOfRange(patience=2), []
    for step in range(5):
        meta = {FROZEN_AT_ATTACH: ["pos.weight"], "nonfinite": True} if step == 0 else {}
        values = {"update_ratio/pos.weight": 0.0, "update_ratio/fc.weight": 0.0}
        found += detector.update(Record(step, values, meta=meta))
    # the fixed table is frozen on purpose (info); the layer that stopped is not
    assert sorted((f.where, f.severity) for f in found) == [
        ("fc.weight", "warning"),
        ("pos.weight", "info"),
    ]


@pytest.mark.parametrize(("raised", "jolted"), [(40.0, 151), (40.0, 200), (2.0, 151)])
def test_a_learning_rate_raised_at_a_stroke_just_before_a_jolt_is_the_cause(
    tmp_path, raised, jolted
):
    # a resume sets the rate 40x what the run had (2e-3 -> 8e-2) at step 150; the loss jumps
    # at 151, comes back within a few steps, and the attention logits of the first layers jump
    # at 153. Controls: the jolt came 50 steps after the raise, or the rate only doubled (a
    # schedule's own step up: not past the limit by itself)
    rows = [
        {"loss": 3.6 if t != jolted else 13.0, "lr/0": 2e-3 * (raised if t >= 150 else 1.0)}
        for t in range(220)
    ]
    spike = ("loss_spike", jolted, None, {"ratio": 3.5}, "warning")
    attention = (
        "attention_logit_growth",
        jolted + 2,
        "enc.0.attn",
        {"growth_factor": 60.0},
        "warning",
    )
    report = diagnose_stored(tmp_path, f"{raised}-{jolted}", rows, [spike, attention])
    sharpness = [d for d in report.diagnoses if d.cause == "sharpness_above_limit"]
    if (raised, jolted) == (40.0, 151):
        assert report.top is sharpness[0] and report.top.first_step == 150
        assert report.top.evidence["jolted_at"] == 151
    else:
        assert not sharpness and report.top.cause == "attention_logit_growth"


@pytest.mark.parametrize("grows", ["body", "head"])
def test_logits_that_diverge_while_their_head_holds_still_grow_from_upstream(tmp_path, grows):
    # a memory network's hop map is penalised with the wrong sign and grows 1.2% a step from
    # step 60; the answer projection (the head) holds still, yet its logits are found drifting
    # at 100: the drift comes from upstream. Control: the head's own weights grow (a z-loss
    # with its sign flipped): the logits' divergence is the mechanism
    def row(t):
        grown = 3.0 * math.exp(0.012 * max(t - 60, 0))
        return {
            "loss": 1.0 - 0.004 * min(t, 100) if t < 180 else 0.6 * 1.02 ** (t - 180),
            "param_norm/body.weight": grown if grows == "body" else 3.0,
            "param_norm/head.weight": grown if grows == "head" else 2.0,
        }

    rows = [row(t) for t in range(240)]
    logits = ("output_logit_divergence", 100, "head", {"drift": 12.0}, "warning")
    climb = ("loss_divergence", 180, None, {"ratio": 2.0}, "critical")
    growth = ("gradient_growth", 190, "body.weight", {"growth": 12.0}, "warning")
    report = diagnose_stored(tmp_path, grows, rows, [logits, climb, growth])
    exploding = next(d for d in report.diagnoses if d.cause == "exploding_gradients")
    if grows == "body":
        assert report.top is exploding and exploding.where[0] == "body"
        assert exploding.first_step == 60
    else:
        assert "runaway_weights" not in exploding.evidence
        assert report.top.cause == "output_logit_divergence"


@pytest.mark.parametrize(
    ("damped", "global_spike"),
    [("hit", False), ("others", False), ("all", False), ("all", True)],
)
def test_a_spike_is_judged_by_the_updates_of_the_tensors_it_hit(tmp_path, damped, global_spike):
    # an unnormalised unlabelled batch spikes the gradients of the three weight tensors at 120;
    # Adam's second moment then damps their updates 20x, while the four tensors the spike
    # missed move as before. Controls: the spiked tensors move as before and only the others
    # slowed down (something else, not this spike); every tensor slowed alike (Adam's steps
    # shrinking as training goes on, as a healthy Zamba's did after one q_proj spiked). A
    # global spike hit every tensor: there is no control, and the drop is its doing
    from steadygrad.store import load

    hit = ["conv1.weight", "conv2.weight", "head.weight"]
    missed = ["conv1.bias", "conv2.bias", "head.bias", "norm.weight"]
    rows = [{"loss": 0.7} for _ in range(260)]
    for t in range(0, 260, 2):
        for name in hit + missed:
            slowed = damped == "all" or (name in hit) == (damped == "hit")
            rows[t][f"update_ratio/{name}"] = 0.01 if t < 120 or not slowed else 0.0005
    spikes = [("gradient_spike", 120, n, {"spike_factor": 2000.0}, "critical") for n in hit]
    if global_spike:
        spikes.append(("grad_norm_spike", 120, None, {"ratio": 300.0}, "warning"))
    name = f"{damped}-{global_spike}"
    diagnose_stored(tmp_path, name, rows, spikes)
    run = load(tmp_path / name)
    run.config["optimizer_family"] = "adam"  # as the Monitor records it
    report = steadygrad.diagnose(run)
    poisoned = "adam_second_moment_poisoned" in report.causes()
    assert poisoned == (damped == "hit" or global_spike)
    if poisoned:
        assert report.top.cause == "adam_second_moment_poisoned"


@pytest.mark.parametrize("alive", [True, False])
def test_a_freed_leaf_output_does_not_name_the_tensor_put_at_its_address(monkeypatch, alive):
    # a leaf's output is known by its storage address; once that output is freed the
    # allocator may put any tensor there (in a long test session a segmentation model's
    # upsampled logits landed on a freed conv output's address and were blamed on the conv).
    # The address is simulated shared here: both tensors map to one key
    from steadygrad.monitor import intercept

    signal = intercept.InterceptingSignal(every=1)
    body = nn.Conv2d(3, 3, 1)
    signal._names, signal._leaves = {id(body): "body.0"}, {id(body)}
    monkeypatch.setattr(intercept, "_key", lambda tensor: 1234)  # one address for all
    output = body(torch.randn(1, 3, 4, 4))
    signal._pop(body, (), output)
    if not alive:
        del output  # freed: its address is free for the next tensor
    logits = torch.randn(1, 3, 4, 4)
    assert signal.producer(logits) == ("body.0" if alive else None)
