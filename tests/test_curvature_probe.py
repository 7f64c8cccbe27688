"""SharpnessProbe (driven like the Monitor drives a Signal) and the SharpnessAboveLimit detector."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from test_curvature_helpers import dense_for, mlp_problem, one_thread  # noqa: F401

from steadygrad.core.record import Record
from steadygrad.curvature import sharpness
from steadygrad.curvature.probe import SharpnessProbe
from steadygrad.data import load_digits
from steadygrad.diagnose.detectors.curvature import SharpnessAboveLimit
from steadygrad.models import MLP


def rel(a, b):
    return abs(a - b) / abs(b)


def _attached(probe, model, optimizer):
    probe.attach(SimpleNamespace(model=model, optimizer=optimizer))
    return probe


def _gd_steps(model, loss_fn, batch, optimizer, n):
    for _ in range(n):
        optimizer.zero_grad()
        loss_fn(model, batch).backward()
        optimizer.step()


def test_probe_reports_sharpness_and_limit_and_warm_starts():
    model, loss_fn, batch = mlp_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    probe = _attached(SharpnessProbe(loss_fn, batch, every=5, trace=True, tol=1e-6), model, opt)
    assert probe.due(10) and not probe.due(11)
    first = probe.collect(0)
    top = torch.linalg.eigvalsh(dense_for("mlp"))[-1].item()
    assert rel(first["sharpness"], top) < 1e-5
    assert first["sharpness_limit"] == pytest.approx((2 + 2 * 0.9) / 0.1)
    assert first["sharpness_ratio"] == pytest.approx(first["sharpness"] / 38.0)
    assert "hessian_trace" in first and "preconditioned_sharpness" not in first
    _gd_steps(model, loss_fn, batch, torch.optim.SGD(model.parameters(), lr=0.02), 3)
    cold = SharpnessProbe(loss_fn, batch, tol=1e-6)
    _attached(cold, model, opt)
    warm_metrics, cold_metrics = probe.collect(5), cold.collect(5)
    assert warm_metrics["sharpness"] == pytest.approx(cold_metrics["sharpness"], rel=1e-5)
    # the warm re-estimate is cheaper (the trace part costs the same in both)
    warm_cost = warm_metrics["curvature_matvecs"] - 30
    assert warm_cost < cold_metrics["curvature_matvecs"]


def test_probe_with_adam_reports_preconditioned_sharpness():
    model, loss_fn, batch = mlp_problem()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    probe = _attached(SharpnessProbe(loss_fn, batch, k=2, layerwise=True), model, opt)
    before = probe.collect(0)  # no Adam state yet: no preconditioned value, no crash
    assert "preconditioned_sharpness" not in before and "sharpness" in before
    _gd_steps(model, loss_fn, batch, opt, 2)
    after = probe.collect(2)
    assert after["preconditioned_sharpness_limit"] == pytest.approx(3800.0)
    assert after["preconditioned_sharpness"] > 0
    assert set(k for k in after if k.startswith("sharpness/")) == {"sharpness/0", "sharpness/2"}
    assert after["hessian_eigenvalue/2"] <= after["sharpness"]


def test_probe_without_optimizer_measures_without_limit():
    model, loss_fn, batch = mlp_problem()
    probe = _attached(SharpnessProbe(loss_fn, lambda: batch), model, None)
    metrics = probe.collect(0)
    assert "sharpness_limit" not in metrics and metrics["sharpness"] > 0


def test_probe_argument_errors():
    with pytest.raises(TypeError, match="loss_fn"):
        SharpnessProbe("loss", None)
    with pytest.raises(ValueError, match="every"):
        SharpnessProbe(lambda m, b: 0, None, every=0)


# ---------------------------------------------------------------- detector, synthetic


def _records(ratios, limit=10.0, every=10, name="sharpness"):
    out = []
    for i, r in enumerate(ratios):
        out.append(Record(i * every, {name: r * limit, name + "_limit": limit}))
        out.append(Record(i * every + 1, {"loss": 1.0}))  # steps without a probe
    return out


def _run(detector, records):
    return [f for r in records for f in detector.update(r)]


def test_detector_triggers_when_sharpness_stays_above_limit():
    findings = _run(SharpnessAboveLimit(patience=3), _records([0.5, 0.9, 1.05, 1.1, 1.2, 1.3]))
    assert len(findings) == 1
    f = findings[0]
    assert f.kind == "sharpness_above_limit" and f.step == 40
    assert f.evidence["above_since_step"] == 20 and f.evidence["ratio"] == pytest.approx(1.2)


def test_detector_one_finding_per_episode_and_new_episode_after_recovery():
    ratios = [1.1, 1.1, 1.1, 1.2, 1.3, 0.9, 1.1, 1.1, 1.1]
    findings = _run(SharpnessAboveLimit(patience=3), _records(ratios))
    assert [f.step for f in findings] == [20, 80]


def test_detector_preconditioned_pair():
    recs = _records([1.5, 1.6, 1.7], limit=3800.0, name="preconditioned_sharpness")
    findings = _run(SharpnessAboveLimit(patience=2, adam_warmup=0), recs)
    assert len(findings) == 1 and findings[0].evidence["signal"] == "preconditioned_sharpness"
    # the same readings during Adam's warm-up (the default 100 steps) are not judged
    assert _run(SharpnessAboveLimit(patience=2), recs) == []


def test_detector_control_brief_crossings_and_below_limit():
    assert _run(SharpnessAboveLimit(patience=3), _records([0.5, 1.2, 1.3, 0.9, 1.4, 0.95])) == []
    assert _run(SharpnessAboveLimit(), _records([0.2, 0.5, 0.8, 0.99, 0.97])) == []
    nan = [Record(0, {"sharpness": float("nan"), "sharpness_limit": 2.0})]
    assert _run(SharpnessAboveLimit(patience=1), nan) == []


def test_detector_arguments():
    with pytest.raises(ValueError, match="patience"):
        SharpnessAboveLimit(patience=0)
    with pytest.raises(ValueError, match="threshold"):
        SharpnessAboveLimit(threshold=-1.0)


# ---------------------------------------------------------------- detector, real scenario


def _gd_run(lr, steps=300, every=20):
    x, y, _, _ = load_digits()
    batch = (x[:300], torch.nn.functional.one_hot(y[:300], 10).float())

    def loss_fn(m, b):
        return 0.5 * ((m(b[0]) - b[1]) ** 2).sum(1).mean()

    torch.manual_seed(0)
    model = MLP(64, [64, 64], 10, activation=torch.nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    probe = _attached(SharpnessProbe(loss_fn, batch, every=every), model, opt)
    detector = SharpnessAboveLimit(patience=3, threshold=0.97)
    findings = []
    for step in range(steps):
        opt.zero_grad()
        loss = loss_fn(model, batch)
        loss.backward()
        opt.step()
        values = {"loss": float(loss.detach())}
        if probe.due(step):
            values.update(probe.collect(step))
        findings += detector.update(Record(step, values))
    return findings


def test_detector_fires_on_gd_at_the_edge_of_stability_and_not_below_it():
    findings = _gd_run(lr=0.4)  # sharpness reaches 2/lr = 5 within ~150 steps, then hovers
    assert len(findings) >= 1 and findings[0].evidence["signal"] == "sharpness"
    assert _gd_run(lr=0.05) == []  # sharpness stays far below 2/lr = 40


def test_warm_started_probe_stays_accurate_along_an_edge_of_stability_run():
    # At the edge of stability the top eigenvector keeps moving and the top two eigenvalues come
    # close; every warm-started estimate must still match a cold, tight one.
    x, y, _, _ = load_digits()
    batch = (x[:500], torch.nn.functional.one_hot(y[:500], 10).float())

    def loss_fn(m, b):
        return 0.5 * ((m(b[0]) - b[1]) ** 2).sum(1).mean()

    torch.manual_seed(0)
    model = MLP(64, [64, 64], 10, activation=torch.nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    probe = _attached(SharpnessProbe(loss_fn, batch, every=20), model, opt)
    worst = 0.0
    for step in range(1001):
        if probe.due(step):
            value = probe.collect(step)["sharpness"]
            truth = sharpness(model, loss_fn, batch, tol=1e-9, start="random", vectors=False)
            worst = max(worst, abs(value - truth.value) / truth.value)
        opt.zero_grad()
        loss_fn(model, batch).backward()
        opt.step()
    assert worst < 1e-3
