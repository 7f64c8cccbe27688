"""Each dynamics study's published claim, asserted on a reduced run (seconds, not minutes)."""

from __future__ import annotations

import json
import warnings

import pytest

from steadygrad.cli import main
from steadygrad.studies.edge_of_stability import run_edge_of_stability
from steadygrad.studies.gradient_coherence import run_gradient_coherence
from steadygrad.studies.loss_landscape import run_loss_landscape
from steadygrad.studies.noise_scale import run_noise_scale
from steadygrad.studies.sgd_trace import run_sgd_trace
from steadygrad.studies.signal_propagation import run_signal_propagation
from steadygrad.studies.top_subspace import run_top_subspace

QUIET = dict(progress=False, plot=False)


@pytest.fixture(autouse=True)
def _no_lanczos_chatter():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def test_coherence_is_high_with_real_labels_and_falls_as_the_net_memorises(tmp_path):
    r = run_gradient_coherence(
        tmp_path,
        steps=300,
        samples=256,
        probe_examples=128,
        hidden=128,
        lr=0.1,
        probe_every=30,
        **QUIET,
    )
    assert r.peak_coherence["real"] > 2.5 * r.peak_coherence["random"]
    assert r.peak_coherence["random"] < 2.0  # random labels: nearly orthogonal gradients
    # real labels: once the training sample is fitted, coherence has fallen far below its peak
    assert r.memorisation_step["real"] is not None
    assert r.final_coherence["real"] < 0.5 * r.peak_coherence["real"]
    assert r.test_accuracy["real"] > 0.8 > 0.3 > r.test_accuracy["random"]
    saved = json.loads((tmp_path / "gradient_coherence.json").read_text())
    assert saved["peak_coherence"]["real"] == pytest.approx(r.peak_coherence["real"])
    assert (tmp_path / "runs" / "real" / "run.db").exists()


def test_noise_scale_grows_as_the_loss_falls(tmp_path):
    r = run_noise_scale(tmp_path, steps=600, probe_examples=256, probe_every=50, **QUIET)
    assert r.loss[-1] < 0.2 * r.loss[0]
    assert r.growth > 3.0
    assert r.rank_correlation < -0.7
    # the two-batch-size estimator agrees in trend
    assert r.two_batch_noise_scale[-1] > 2 * r.two_batch_noise_scale[0]


def test_gradient_lies_in_the_top_hessian_subspace_after_the_transient(tmp_path):
    # Gur-Ari et al. 2018: above 0.9 after the transient, k = 10 classes; here the gradient and
    # Hessian of the whole training set, SGD (batch 256) at lr 1.0, near its stability edge
    r = run_top_subspace(tmp_path, steps=300, probe_every=25, **QUIET)
    n = 64 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10
    assert r.mean_fraction_after_transient > 0.9  # a random 10-dim subspace: 10/n = 0.003
    assert min(r.fraction[2:]) > 0.8
    assert r.mean_overlap_after_transient > 0.9  # and the subspace changes slowly
    assert r.mean_fraction_after_transient > 200 * 10 / n


def test_full_batch_solution_is_sharper_along_filter_normalised_slices(tmp_path):
    r = run_loss_landscape(
        tmp_path,
        steps=800,
        small_batch=16,
        points=9,
        grid=3,
        directions=3,
        probe_every=400,
        **QUIET,
    )
    # both fit the training set to the same (square) loss; the full-batch basin is the sharper
    # one, along filter-normalised slices and by its top Hessian eigenvalue
    assert r.train_accuracy["small"] > 0.99 and r.train_accuracy["large"] > 0.99
    assert r.train_loss["large"] == pytest.approx(r.train_loss["small"], rel=0.3)
    assert r.rise["large"] > 1.6 * r.rise["small"] > 0
    assert r.sharpness["large"] > 1.8 * r.sharpness["small"]
    # full-batch GD at lr 0.25 sits at the edge of stability, 2/lr = 8
    assert r.sharpness["large"] == pytest.approx(2 / 0.25, rel=0.2)
    assert len(r.rise_during["small"]) == 2  # the probe ran in the Monitor


def test_tanh_order_to_chaos_transition_is_at_the_mean_field_critical_value(tmp_path):
    r = run_signal_propagation(
        tmp_path,
        weight_variances=(1.0, 1.5, 1.7, 1.9, 2.1, 2.6),
        width=256,
        depth=16,
        examples=32,
        jacobian_width=24,
        jacobian_depth=6,
        **QUIET,
    )
    assert r.critical == pytest.approx(1.76, abs=0.01)  # Schoenholz et al. 2017, Fig. 1
    # the measured per-layer growth follows the mean-field recursion for this depth and input
    for measured, predicted in zip(r.measured_growth, r.predicted_growth, strict=True):
        assert measured == pytest.approx(predicted, rel=0.04)
    assert r.measured_critical == pytest.approx(r.predicted_critical, rel=0.05)
    # and crosses 1 near the infinite-depth critical value
    assert r.measured_critical == pytest.approx(r.critical, rel=0.15)
    # the Jacobian's mean squared singular value grows with chi_1 as well
    assert r.jacobian_mean_sq[0] < 1 < r.jacobian_mean_sq[-1]


def test_sgd_trace_settles_at_or_below_two_over_lr(tmp_path):
    r = run_sgd_trace(tmp_path, steps=750, probe_every=250, trace_matvecs=30, **QUIET)
    assert r.trace_ratio["sgd"] <= 1.1
    assert r.trace_ratio["gd"] > 1.5 * r.trace_ratio["sgd"]


def test_adam_preconditioned_sharpness_hovers_at_38_over_lr(tmp_path):
    result = run_edge_of_stability(
        tmp_path,
        step_sizes=(2e-3,),
        steps=500,
        probe_every=25,
        samples=300,
        optimizer="adam",
        progress=False,
    )
    run = result.runs[2e-3]
    assert run.limit == pytest.approx(38 / 2e-3)
    assert run.initial_ratio < 0.5
    assert 0.85 <= result.ratios()[2e-3] <= 1.15
    with pytest.raises(ValueError, match="optimizer"):
        run_edge_of_stability(tmp_path, optimizer="rmsprop")


def test_studies_run_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "prop"
    code = main(
        [
            "study",
            "signal-propagation",
            "-o",
            str(out),
            "--weight-variances",
            "1.0",
            "2.5",
            "--depth",
            "5",
            "--width",
            "32",
        ]
    )
    assert code == 0
    assert (out / "signal_propagation.json").exists() and (out / "signal_propagation.png").exists()
    assert "critical value" in capsys.readouterr().out


def test_sgd_trace_on_a_nonlinear_mlp(tmp_path):
    # Wu and Su 2023: at batch size 1 a linearly stable minimum has tr(H) <= 2/lr; GD needs only
    # lambda_max <= 2/lr and, on this tanh MLP, settles with the trace well above 2/lr
    r = run_sgd_trace(tmp_path, model="mlp", steps=1500, probe_every=250, trace_matvecs=30, **QUIET)
    assert r.limit == pytest.approx(2 / 0.2)
    assert r.final_loss["sgd"] < 0.05 and r.final_loss["gd"] < 1e-3  # both near a minimum
    assert r.trace_ratio["sgd"] <= 1.0
    assert r.trace_ratio["gd"] > 1.2
    assert r.sharpness_ratio["gd"] < 1.1  # GD's own criterion holds
    with pytest.raises(ValueError, match="model"):
        run_sgd_trace(tmp_path, model="resnet")


def test_cross_entropy_gradient_lies_in_its_batch_top_subspace(tmp_path):
    # Gur-Ari et al.'s setup: cross-entropy, SGD lr 0.1, batch 64, two hidden layers of 32, k = 10;
    # gradient and Hessian of the same 64 training images
    r = run_top_subspace(
        tmp_path,
        steps=800,
        probe_every=50,
        loss="cross_entropy",
        lr=0.1,
        hidden=32,
        probe_examples=64,
        transient=0.5,
        **QUIET,
    )
    # the gradient of 64 examples lies in the span of their 64 x 10 logit gradients: a random
    # 10-dim subspace of that span would hold 10/640 of it
    assert r.mean_fraction_after_transient > 0.85
    assert min(r.fraction[-4:]) > 0.8
    assert r.mean_overlap_after_transient > 0.9
    with pytest.raises(ValueError, match="loss"):
        run_top_subspace(tmp_path, loss="hinge")
