"""Run shapes the eleventh wave's runs showed, each a trigger and a control: one outlier batch
whose gradient inflated Adam's second moment for far longer than the batch itself mattered;
gradients first seen growing once the loss had been climbing for a while; a softmax whose
first rows collapsed between two readings on the cadence; nn.MultiheadAttention's biases,
which the update-ratio check did not know for biases; rows collapsed from the first reading."""

from __future__ import annotations

import pytest
import torch
from helpers import diagnose_stored, regression_batch, tiny_mlp
from torch import nn

import steadygrad


def _outlier_under_adam(tmp_path, beta2: float, scale: float):
    """A regression MLP under Adam(betas=(0.9, beta2)); at step 100 one batch arrives in raw
    units (inputs and targets x ``scale``): a loss spike, and a gradient ~``scale`` times the
    usual that fills the second moment, which forgets it over ~1/(1 - beta2) steps."""
    torch.manual_seed(0)
    model = tiny_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, beta2))
    mon = steadygrad.Monitor(model, opt, tmp_path / f"b{beta2}", progress=False)
    for step in range(260):
        x, y = regression_batch(step % 16)
        if step == 100:
            x, y = x * scale, y * scale
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        mon.step(loss)
        opt.zero_grad()
    mon.close()
    return steadygrad.diagnose(tmp_path / f"b{beta2}")


@pytest.mark.parametrize("beta2, scale", [(0.999, 30.0), (0.9, 300.0)])
def test_an_outlier_whose_harm_outlives_it_in_adams_moments_names_the_poisoning(
    tmp_path, beta2, scale
):
    # Trigger: beta2 = 0.999 remembers the outlier's gradient for ~1000 steps; 100 steps after
    # it the updates are still a third of their size: the batch is gone, the harm it left in
    # the optimizer's state is what holds the run back. Control: beta2 = 0.9 forgets even a
    # gradient 300x the usual within ~100 steps: the outlier batch is the story (its damping,
    # if named, ranks below it; once the loss went on at its pace, it is not named)
    report = _outlier_under_adam(tmp_path, beta2, scale)
    causes = report.causes()
    assert "data_outlier" in causes
    poisoned = next((d for d in report.diagnoses if d.cause == "adam_second_moment_poisoned"), None)
    if beta2 > 0.99:
        assert poisoned is not None and poisoned.first_step == 100
        assert poisoned.evidence["update_ratio_after_over_before"] < 0.5
        assert report.top is poisoned and poisoned.evidence["update_ratio_later_over_before"] < 0.5
        assert "100 steps on they were still at" in poisoned.summary
    else:
        assert report.top.cause == "data_outlier"
        if poisoned is not None:
            assert "update_ratio_later_over_before" not in poisoned.evidence
            assert causes.index("adam_second_moment_poisoned") > causes.index("loss_spike")


@pytest.mark.parametrize("came_back", [False, True])
def test_gradients_first_seen_growing_in_a_climb_already_under_way_grew_with_the_loss(
    tmp_path, came_back
):
    # Trigger (a SEW-D fine-tune whose target normaliser drifts from step 150): the loss
    # leaves its best level at 156 and is found climbing at 169; the gradients, growing with
    # its error, are found growing at the break (186): a consequence of the climb. Control
    # (a CfC cell whose recurrent weight compounds): an early climb the loss came back from,
    # to a new best at 113, is over; the gradients found growing at 128 begin the new one
    rows = []
    for t in range(260):
        if came_back:
            loss = 0.8 if 90 <= t < 105 else (0.75 if t < 120 else 0.75 * 1.02 ** (t - 120))
        else:
            loss = max(1.0 - t / 150, 0.01) if t < 156 else 0.01 * 1.3 ** min(t - 156, 16)
        grad = 0.3 if t < 120 else 0.3 * 1.03 ** (t - 120)
        rows.append({"loss": loss, "grad_norm": grad})
    best = 113 if came_back else 156

    def climb(step, severity):
        return ("loss_divergence", step, None, {"best_level_step": best, "ratio": 3.0}, severity)

    growth = ("gradient_growth", 128 if came_back else 186, "cell.ff1.weight")
    findings = [
        ("loss_divergence", 90, None, {"best_level_step": 85, "ratio": 1.8}, "warning"),
        climb(128 if came_back else 169, "warning"),
        (*growth, {"growth": 25.0, "started_at_step": 54, "best_level_step": 16}, "warning"),
        climb(186, "critical"),
    ]
    if not came_back:
        findings.pop(0)
    report = diagnose_stored(tmp_path, str(came_back), rows, findings)
    exploding = next(d for d in report.diagnoses if d.cause == "exploding_gradients")
    if came_back:
        assert report.top is exploding and not exploding.consequence_of
    else:
        assert report.top.cause == "loss_divergence"
        assert "already climbing from step 169" in exploding.consequence_of


@pytest.mark.parametrize("heating", [1.03, 1.0])
def test_a_first_collapsed_row_makes_the_monitor_look_closer(tmp_path, heating):
    # Trigger: a calibration temperature that compounds the wrong way from step 60 (logits x
    # 1.03 a step) on a head that already separates its classes: at the readings on the
    # cadence (150, 175) rows are collapsed; the monitor reads the softmax at the steps after
    # each, and the collapse is found at 177, not three cadences (75 steps) on, past the end of
    # this run. Control: the same head at a steady temperature is read on the cadence alone
    torch.manual_seed(0)
    model = nn.Linear(16, 4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", progress=False)
    for step in range(190):
        loss = nn.functional.cross_entropy(model(x) * heating ** max(step - 60, 0), y)
        loss.backward()
        opt.step()
        mon.step(loss)
        opt.zero_grad()
    mon.close()
    run = steadygrad.load(tmp_path / "run")
    steps, collapsed = run.series("softmax_collapse")
    found = [f for f in run.findings() if f.kind == "softmax_collapse"]
    if heating == 1.0:
        assert list(steps) == list(range(0, 190, 25)) and max(collapsed) == 0
        assert not found
    else:
        assert 0 < collapsed[list(steps).index(150)] < 0.1  # a few rows: not yet a finding
        assert {151, 152, 153, 176, 177, 178} <= set(steps)  # closer, after each
        assert not [s for s in steps if 155 < s < 175]  # on the cadence in between
        assert [f.step for f in found] == [177]
        assert steadygrad.diagnose(tmp_path / "run").top.cause == "softmax_collapse"


@pytest.mark.parametrize(
    "name, found",
    [
        ("layers.0.self_attn.in_proj_bias", False),  # nn.MultiheadAttention's, zero at init
        ("layers.0.self_attn.bias_k", False),
        ("layers.0.self_attn.in_proj_weight", True),  # a weight rewritten by half each step
    ],
)
def test_an_attention_bias_starting_at_zero_is_a_bias_to_the_update_ratio(name, found):
    # A TabPFN-style encoder (nn.TransformerEncoderLayer) under Adadelta: the attention's
    # in_proj_bias starts at zero and hovers near it, so its steps stay half its size for
    # good in a healthy run; like any bias it says nothing about the rate. Control: the same
    # ratio on the attention's weight is a step rewriting half of it
    from steadygrad.core import Record
    from steadygrad.diagnose.detectors import UpdateRatioOutOfRange

    detector = UpdateRatioOutOfRange()
    findings = [
        f
        for step in range(10, 60, 10)
        for f in detector.update(Record(step, {f"update_ratio/{name}": 0.5 + step / 1e3}))
    ]
    assert bool(findings) is found
    if found:
        assert findings[0].where == name and findings[0].evidence["direction"] == "too_large"


@pytest.mark.parametrize("from_init", [True, False])
def test_rows_collapsed_from_the_first_reading_date_the_collapse_before_the_drift(
    tmp_path, from_init
):
    # A LeNet whose temperature divides the wrong way: its logits start inflated (log Z 252),
    # a tenth of the rows collapsed at the first readings; the log-partition, falling from
    # there, is found drifting at step 2, the collapse confirmed on the readings from 25: it
    # was there from step 0, and the drift is its doing. Control: no row collapsed before 25
    # (a z-loss sign drifting the logits first): the drift came first
    rows = []
    for t in range(120):
        row = {"loss": 2.0 - 0.005 * t}
        if t <= 5 or t % 25 == 0 or 25 < t < 30:
            early = 0.08 if from_init else 0.0
            row["softmax_collapse"] = early if t <= 5 else 0.4
        rows.append(row)
    drift = ("output_logit_divergence", 2, "fc3", {"drift": -120.0}, "warning")
    collapse = (
        "softmax_collapse",
        27,
        "fc3",
        {"softmax_collapse": 0.39, "streak_began": 25, "previous_reading": 5},
        "warning",
    )
    report = diagnose_stored(tmp_path, str(from_init), rows, [drift, collapse])
    softmax = next(d for d in report.diagnoses if d.cause == "softmax_collapse")
    if from_init:
        assert report.top is softmax and softmax.first_step == 0
        assert softmax.evidence["rows_collapsed_since"] == 0
    else:
        assert report.top.cause == "output_logit_divergence" and softmax.first_step == 25
